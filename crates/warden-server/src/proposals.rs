//! Agent-proposed policy changes (DESIGN §7): gathering what the core's review reads, running
//! it off the runtime, storing its analysis, and applying a proposal — at once when the
//! review approves it, or when a human does — as a new policy version.
//!
//! Key decisions:
//!
//! - **The review is the core's.** `warden_policy::review::review` is a pure function; this
//!   module gathers its inputs, each the tenant's own (evidence of another tenant is simply
//!   not found), and writes what it returns. A `Review` is stored as the JSON it serializes
//!   to, with the semantic diff it was shown with.
//! - **Applying is publishing.** A proposal is applied through `Policies::submit` with
//!   `Cause::Proposal`: published only while the live version is still the one analyzed,
//!   with the proposal's row and events in the same transaction as the version and its
//!   `policy_published` event, so a proposal is never applied without its version nor a
//!   version published for it without the proposal saying so.
//! - **A human approves one analysis.** Approval presents the `review_token` of the analysis
//!   shown; when the live policy changed since, the proposal is analyzed again against the
//!   new one and the approver gets the new analysis and token instead of an apply.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::keys::Role;
use crate::policies::{Cause, DEFAULT_TENANT, LoadedPolicy, Submission, SubmitError, Submitted};
use crate::routes::lifecycle::ChangesBody;
use crate::state::{AppState, now_ms};
use crate::wire::rfc3339;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use utoipa::ToSchema;
use warden_policy::review::{
    Evidence, Inputs, PastProposal, Proposal, Recorded, Replaced, Review, ReviewError, Status,
};
use warden_policy::{Snapshot, Timestamp, Verdict};
use warden_store::{
    NewEvent, ProposalFilter, ProposalLimit, ProposalRecord, ProposalWrite, ProposalWritten,
    StoreError, StoredSnapshot, Supersede, kind, proposal_source, proposal_status,
};

/// The largest proposal body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// The most recent decisions a review replays.
const MAX_REPLAYED: u32 = 20_000;
/// The most earlier proposals of the same change the history check reads.
const MAX_HISTORY: u32 = 1000;
/// How far back the drift check looks for replaced versions.
const DRIFT_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// How many replaced versions the drift check reads at most.
const MAX_REPLACED: usize = 20;
/// How many of the newest versions the drift check walks the parents of (shadow and
/// failed versions are among them, off the chain).
const SCANNED_VERSIONS: u32 = 200;
/// How often a submission is gathered and reviewed again after losing a race (the live
/// policy changed, or the proposals it supersedes did).
const ATTEMPTS: usize = 4;
/// Who decided a proposal the review decided: `decided_by` of auto-approvals and of
/// proposals a re-review rejected.
pub const BY_REVIEW: &str = "review";
/// The rate limit's window (agents' proposals, and new observed suggestions).
pub(crate) const HOUR_MS: i64 = 3_600_000;
/// The most characters of a rejection's reason an event keeps.
const EVENT_REASON_CHARS: usize = 500;

/// A proposal as the API shows it: the submitted change, its analysis and what became of
/// it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProposalView {
    /// Its id.
    pub id: String,
    /// `auto_approved`, `needs_human`, `revise_requested`, `rejected`, `approved` or
    /// `superseded`.
    pub status: String,
    /// The agent that proposed it; for an observed suggestion, the agent whose friction it
    /// removes.
    pub agent: String,
    /// Who proposed it: `agent`, or `observed` (drafted by Warden from repeated friction).
    pub source: String,
    /// An observed suggestion's friction key: `[kind, agent, action type, target type,
    /// rule]`, kind `denied` or `approved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub observed_key: Option<Value>,
    /// How often an observed suggestion's friction was seen in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hits: Option<i64>,
    /// What the changes together do: `neutral`, `narrowing`, `broadening` or `forbidden`.
    pub classification: String,
    /// Why: the forbidden rule broken, the proof's verdict, the findings that decided.
    pub reasons: Vec<String>,
    /// Each change on its own: `index`, `op`, `classification`, `reasons`.
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<Value>,
    /// For broadening: up to three actions the candidate treats more permissively, each
    /// `{action, live: {effect, rules}, candidate: {effect, rules}}`.
    #[schema(value_type = Vec<Object>)]
    pub counterexamples: Vec<Value>,
    /// Risky shapes: `{code, message, rule?}`.
    #[schema(value_type = Vec<Object>)]
    pub findings: Vec<Value>,
    /// The replay of recent decisions: `replayed`, `same`, `unknown`, and `flips` by kind
    /// with up to five examples each.
    #[schema(value_type = Object)]
    pub impact: Value,
    /// On `revise_requested`: narrower changes that would be acceptable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub suggestion: Option<Value>,
    /// When the review flagged it as a security event (a repeat, a revert): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_event: Option<String>,
    /// What the tenant's external reviewer said, when it has one: `verdict` (`approve`,
    /// `reject`, `revise`, `needs_human`, or `null` when it gave none) and `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub external_review: Option<Value>,
    /// What it is about, for superseding: the action patterns it touches (and the target its
    /// evidence names).
    pub subject: String,
    /// What an approver presents to approve exactly this analysis.
    pub review_token: String,
    /// The semantic diff from the live policy analyzed to the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<ChangesBody>,
    /// The candidate's version.
    pub candidate_version: String,
    /// The candidate document (approver and admin keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_source: Option<String>,
    /// The policy version it published, once applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// That version's revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The proposal as submitted: `rationale`, `risks`, `confidence`, `evidence`, `changes`.
    #[schema(value_type = Object)]
    pub proposal: Value,
    /// Who decided it: an approver's user, or `review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// A rejection's reason, for the agent to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The newer proposal that replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// When it was submitted, RFC 3339.
    pub created_at: String,
    /// When it was decided, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// On a wait: whether it ended at the timeout, still undecided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
}

impl ProposalView {
    /// The view of a stored proposal. `full` for approver and admin keys; the proposing
    /// agent sees neither the whole candidate document nor other agents' flipped decisions.
    pub fn of(record: &ProposalRecord, full: bool) -> Self {
        let review: Value = serde_json::from_str(&record.review).unwrap_or(Value::Null);
        let list = |name: &str| match &review[name] {
            Value::Array(items) => items.clone(),
            _ => Vec::new(),
        };
        let mut impact = review["impact"].clone();
        if !full && let Some(flips) = impact["flips"].as_array_mut() {
            for flip in flips {
                if let Some(examples) = flip["examples"].as_array_mut() {
                    examples.retain(|e| e["agent"].as_str() == Some(record.agent.as_str()));
                }
            }
        }
        Self {
            id: record.id.clone(),
            status: record.status.clone(),
            agent: record.agent.clone(),
            source: record.source().to_owned(),
            observed_key: record
                .observed_key
                .as_deref()
                .and_then(|k| serde_json::from_str(k).ok()),
            hits: record.observed_key.is_some().then_some(record.hits),
            classification: review["classification"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            reasons: list("reasons")
                .into_iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect(),
            changes: list("changes"),
            counterexamples: list("counterexamples"),
            findings: list("findings"),
            impact,
            suggestion: review.get("suggestion").filter(|s| !s.is_null()).cloned(),
            security_event: review["security_event"].as_str().map(str::to_owned),
            external_review: review
                .get("external_review")
                .filter(|r| !r.is_null())
                .cloned(),
            subject: record.subject.clone(),
            review_token: record.review_token.clone(),
            diff: serde_json::from_value(review["diff"].clone()).ok(),
            candidate_version: review["candidate"]["version"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            candidate_source: full
                .then(|| review["candidate"]["source"].as_str().map(str::to_owned))
                .flatten(),
            version: record.applied_version.clone(),
            revision: record.applied_revision,
            proposal: serde_json::from_str(&record.body).unwrap_or(Value::Null),
            decided_by: record.decided_by.clone(),
            reason: record.reason.clone(),
            superseded_by: record.superseded_by.clone(),
            created_at: rfc3339(record.created_at_ms),
            decided_at: record.decided_at_ms.map(rfc3339),
            timed_out: None,
        }
    }
}

/// One line of `GET /v1/proposals`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProposalSummary {
    /// Its id.
    pub id: String,
    /// Its status.
    pub status: String,
    /// The agent that proposed it (or whose friction an observed suggestion removes).
    pub agent: String,
    /// `agent` or `observed`.
    pub source: String,
    /// How often an observed suggestion's friction was seen in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hits: Option<i64>,
    /// What its changes do.
    pub classification: String,
    /// What it is about.
    pub subject: String,
    /// How many findings the review made.
    pub findings: usize,
    /// The version it published, once applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When it was submitted, RFC 3339.
    pub created_at: String,
    /// When it was decided, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
}

impl ProposalSummary {
    /// The summary of a stored proposal.
    pub fn of(record: &ProposalRecord) -> Self {
        let review: Value = serde_json::from_str(&record.review).unwrap_or(Value::Null);
        Self {
            id: record.id.clone(),
            status: record.status.clone(),
            agent: record.agent.clone(),
            source: record.source().to_owned(),
            hits: record.observed_key.is_some().then_some(record.hits),
            classification: review["classification"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            subject: record.subject.clone(),
            findings: review["findings"].as_array().map_or(0, Vec::len),
            version: record.applied_version.clone(),
            created_at: rfc3339(record.created_at_ms),
            decided_at: record.decided_at_ms.map(rfc3339),
        }
    }
}

/// What an approval did.
#[derive(Debug)]
pub enum Approved {
    /// Published and approved.
    Applied(ProposalView),
    /// The live policy changed since the analysis shown: analyzed again, nothing applied.
    PolicyChanged(ProposalView),
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "a proposal could not be read or written");
    ApiError::store_unavailable()
}

fn feature_disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "feature_disabled",
        "proposals are off for this tenant (`proposals: off` in its policy)",
    )
}

/// The tenant's live policy, if it takes proposals; 404 `feature_disabled` otherwise.
pub fn live_for_proposals(state: &AppState, tenant: &str) -> Result<Arc<LoadedPolicy>, ApiError> {
    state
        .policies()
        .current()
        .for_tenant(tenant)
        .filter(|p| p.policy.proposals_enabled())
        .cloned()
        .ok_or_else(feature_disabled)
}

/// Whether the caller sees every proposal of its tenant (approver, admin) rather than only
/// its own agent's.
fn sees_all(caller: &Caller) -> bool {
    caller
        .roles
        .iter()
        .any(|r| matches!(r, Role::Approver | Role::Admin))
}

/// The tenant's proposal `id`, if the caller may see it: approver and admin keys any of the
/// tenant's, an agent key its own agent's (another's is not found, like another tenant's).
pub async fn visible(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(ProposalRecord, bool), ApiError> {
    caller.require(&[Role::Agent, Role::Approver, Role::Admin])?;
    let missing = || ApiError::not_found(format!("no proposal `{id}`"));
    let record = state
        .store()
        .proposal(&caller.tenant, id)
        .await
        .map_err(store_error)?
        .ok_or_else(missing)?;
    let full = sees_all(caller);
    if !full && caller.agent.as_deref() != Some(record.agent.as_str()) {
        return Err(missing());
    }
    Ok((record, full))
}

/// The tenant's proposals, newest first: an agent key's own agent's only.
pub async fn list(
    state: &AppState,
    caller: &Caller,
    status: Option<String>,
    source: Option<String>,
    limit: u32,
    before: Option<String>,
) -> Result<(Vec<ProposalSummary>, Option<String>), ApiError> {
    caller.require(&[Role::Agent, Role::Approver, Role::Admin])?;
    let agent = if sees_all(caller) {
        None
    } else {
        Some(caller.agent.clone().unwrap_or_default())
    };
    let before = match before {
        // The position of a proposal the caller may see; any other id starts nowhere.
        Some(id) => {
            let (record, _) = visible(state, caller, &id).await?;
            Some((record.created_at_ms, record.id))
        }
        None => None,
    };
    let page = state
        .store()
        .proposals(&ProposalFilter {
            tenant: caller.tenant.clone(),
            status,
            agent,
            source,
            limit,
            before,
            ..ProposalFilter::default()
        })
        .await
        .map_err(store_error)?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|p| p.id.clone()))
        .flatten();
    Ok((page.iter().map(ProposalSummary::of).collect(), next))
}

/// Free text an agent writes for a human: at most the core's limits, and no control or
/// invisible formatting characters other than newlines and tabs (an escape sequence in a
/// rationale would rewrite an approver's terminal).
fn readable(field: &str, value: &str) -> Result<(), ApiError> {
    if value
        .chars()
        .all(|c| c == '\n' || c == '\t' || warden_policy::action::printable(c))
    {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "invalid_field",
        format!("invalid `{field}`: holds a control or invisible character"),
    ))
}

/// Reads a proposal body: strict JSON (no repeated key), an object, the core's checks.
fn parse(bytes: &[u8]) -> Result<(Proposal, Value), ApiError> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "a proposal is at most 64 KiB",
        ));
    }
    let value = warden_policy::json::parse_strict(bytes).map_err(|e| match e {
        warden_policy::json::JsonError::DuplicateKey { .. } => {
            ApiError::bad_request("duplicate_key", e.to_string())
        }
        other => ApiError::bad_request("invalid_body", other.to_string()),
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    let proposal = Proposal::from_value(value.clone()).map_err(|e| {
        ApiError::bad_request(
            "invalid_field",
            format!(
                "invalid `{}`: {}",
                e.field,
                crate::error::in_words(&e.message)
            ),
        )
    })?;
    readable("rationale", &proposal.rationale)?;
    for (i, risk) in proposal.risks.iter().enumerate() {
        readable(&format!("risks[{i}]"), risk)?;
    }
    Ok((proposal, value))
}

/// What a review reads, gathered from the store for one tenant.
pub(crate) struct Gathered {
    pub(crate) live: Arc<LoadedPolicy>,
    /// The live document, or its source when this replica has not read it yet.
    live_document: Result<Arc<Value>, String>,
    evidence: Vec<Evidence>,
    /// Rows newer than `cached` to open and decode (all of the window's, cold).
    snapshots: Vec<StoredSnapshot>,
    /// The window's snapshots this replica had decoded already, newest first.
    cached: Vec<Recorded>,
    history: Vec<PastProposal>,
    replaced: Vec<ReplacedVersion>,
}

/// A version the drift check compares with: its fingerprint when this replica knows it,
/// else its source to compute it from.
struct ReplacedVersion {
    hash: String,
    known: Result<String, String>,
    replaced_at: Timestamp,
}

/// What reviews read of policy versions, by content hash, as this replica computed it:
/// reading a large document takes milliseconds, and every review reads the live one and
/// compares with the fingerprints of up to [`MAX_REPLACED`] replaced ones.
#[derive(Debug, Default)]
pub struct Documents {
    fingerprints: Cache<String>,
    live: Cache<Arc<Value>>,
    /// Per tenant, its recent decisions' snapshots as the last review replayed them (opened
    /// and decoded, newest first): a decision's snapshot never changes, so a review reads
    /// only the rows newer than these.
    recent: Cache<Vec<Recorded>>,
}

impl Documents {
    /// Fingerprints kept (two digests each).
    const FINGERPRINTS: usize = 4096;
    /// Live documents, and tenants' recent snapshots, kept: one per tenant reviewed lately.
    const LIVE: usize = 64;

    /// The tenant's snapshots as last replayed, for one review to own (a review of the same
    /// tenant at the same time reads them all from the store instead).
    fn take_recent(&self, tenant: &str) -> Vec<Recorded> {
        self.recent.take(tenant).unwrap_or_default()
    }

    fn put_recent(&self, tenant: &str, recent: Vec<Recorded>) {
        self.recent.insert(tenant.to_owned(), recent, Self::LIVE);
    }
}

/// A map that starts over when full: what it holds is recomputed at once.
#[derive(Debug)]
struct Cache<T>(std::sync::Mutex<std::collections::HashMap<String, T>>);

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self(std::sync::Mutex::default())
    }
}

impl<T: Clone> Cache<T> {
    fn get(&self, key: &str) -> Option<T> {
        self.0.lock().ok()?.get(key).cloned()
    }
}

impl<T> Cache<T> {
    /// Removes and returns `key`'s value: the caller owns it until it puts it back.
    fn take(&self, key: &str) -> Option<T> {
        self.0.lock().ok()?.remove(key)
    }

    fn insert(&self, key: String, value: T, max: usize) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= max && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key, value);
        }
    }
}

/// A review's outcome with what is stored beside it.
pub(crate) struct Reviewed {
    pub(crate) review: Review,
    pub(crate) token: String,
    /// The review as stored: its JSON with the semantic diff it is shown with.
    pub(crate) stored: String,
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms).unwrap_or_default()
}

fn verdict(effect: Option<&str>) -> Verdict {
    match effect {
        Some("allow") => Verdict::Allow,
        Some("require_approval") => Verdict::RequireApproval,
        _ => Verdict::Deny,
    }
}

/// A fixed column as the review may read it: a value the policy redacted (a keyed digest)
/// says nothing about the target.
fn plain(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.starts_with("hmac-sha256:"))
}

pub(crate) async fn gather(
    state: &AppState,
    tenant: &str,
    proposal: &Proposal,
    now: i64,
) -> Result<Gathered, ApiError> {
    let store = state.store();
    let live = live_for_proposals(state, tenant)?;
    let live_document = match state.documents().live.get(&live.hash) {
        Some(document) => Ok(document),
        None => Err(store
            .policy(&live.tenant, Some(live.revision))
            .await
            .map_err(store_error)?
            .map(|p| p.source)
            .ok_or_else(|| {
                tracing::error!(
                    tenant,
                    revision = live.revision,
                    "the live version is not stored"
                );
                ApiError::internal()
            })?),
    };
    let ids: Vec<String> = proposal.evidence_ids().map(str::to_owned).collect();
    let evidence = store
        .decision_events(tenant, &ids)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter_map(|e| {
            let e = e.event;
            Some(Evidence {
                decision_id: e.decision_id?,
                agent: plain(e.agent),
                action_type: plain(e.action_type)?,
                target_type: plain(e.target_type),
                target_id: plain(e.target_id),
                effect: verdict(e.effect.as_deref()),
            })
        })
        .collect();
    let (snapshots, cached) = recent_snapshots(state, tenant, now).await?;
    let history = store
        .proposals(&ProposalFilter {
            tenant: tenant.to_owned(),
            change_hash: Some(proposal.change_hash()),
            limit: MAX_HISTORY,
            ..ProposalFilter::default()
        })
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|p| PastProposal {
            evidence: serde_json::from_str::<Value>(&p.body)
                .ok()
                .and_then(|b| Proposal::from_value(b).ok())
                .map(|b| b.evidence_ids().map(str::to_owned).collect())
                .unwrap_or_default(),
            rejected: p.status == proposal_status::REJECTED,
            change_hash: p.change_hash,
            id: p.id,
        })
        .collect();
    // The versions the tenant's own active one replaced, one parent at a time, while the
    // replacement went live within the drift window. Sources are read only for versions
    // whose fingerprint this replica has not computed yet.
    let versions = store
        .policy_versions(tenant, None, SCANNED_VERSIONS)
        .await
        .map_err(store_error)?;
    let by_revision: std::collections::HashMap<i64, &warden_store::PolicyVersionInfo> =
        versions.iter().map(|v| (v.revision, v)).collect();
    let mut replaced = Vec::new();
    let mut current = versions
        .iter()
        .find(|v| v.status == warden_store::policy_status::ACTIVE);
    while let Some(version) = current.take() {
        let Some(older) = version.parent.and_then(|p| by_revision.get(&p)) else {
            break;
        };
        if version.created_at_ms < now - DRIFT_WINDOW_MS || replaced.len() >= MAX_REPLACED {
            break;
        }
        let known = match state.documents().fingerprints.get(&older.hash) {
            Some(fingerprint) => Ok(fingerprint),
            None => match store
                .policy(tenant, Some(older.revision))
                .await
                .map_err(store_error)?
            {
                Some(stored) => Err(stored.source),
                None => break,
            },
        };
        replaced.push(ReplacedVersion {
            hash: older.hash.clone(),
            known,
            replaced_at: timestamp(version.created_at_ms),
        });
        current = Some(older);
    }
    Ok(Gathered {
        live,
        live_document,
        evidence,
        snapshots,
        cached,
        history,
        replaced,
    })
}

/// How far before the newest snapshot held a review reads again: a decision is stamped
/// before it commits, so one stamped earlier can commit after a later one was read (within
/// the request timeout, 10 s by default, or its caller was answered an error).
const SNAPSHOT_OVERLAP_MS: i64 = 15_000;

/// The window's snapshots: those this replica decoded for an earlier review (still in the
/// window), and the store's rows newer than them (from a little before the newest held,
/// less those held), or every row of the window when nothing is held or the gap is larger
/// than a review replays.
async fn recent_snapshots(
    state: &AppState,
    tenant: &str,
    now: i64,
) -> Result<(Vec<StoredSnapshot>, Vec<Recorded>), ApiError> {
    let limits = state.limits();
    // What the store may have purged is not replayed from memory either.
    let kept = limits.proposal_replay_window.min(limits.snapshot_retention);
    let start = now.saturating_sub(i64::try_from(kept.as_millis()).unwrap_or(i64::MAX));
    let mut cached = state.documents().take_recent(tenant);
    let oldest = cached.partition_point(|r| r.at >= timestamp(start));
    cached.truncate(oldest);
    let since = cached.first().map_or(start, |newest| {
        newest
            .at
            .unix_millis()
            .saturating_sub(SNAPSHOT_OVERLAP_MS)
            .max(start)
    });
    let rows = state
        .store()
        .recent_snapshots(tenant, since, MAX_REPLAYED)
        .await
        .map_err(store_error)?;
    if rows.len() >= MAX_REPLAYED as usize {
        return Ok((rows, Vec::new()));
    }
    let held: std::collections::HashSet<&str> = cached
        .iter()
        .take_while(|r| r.at >= timestamp(since))
        .map(|r| r.decision_id.as_str())
        .collect();
    let fresh = rows
        .into_iter()
        .filter(|row| !held.contains(row.decision_id.as_str()))
        .collect();
    Ok((fresh, cached))
}

/// The snapshots that open and parse, as the review replays them. Opening and decoding
/// take microseconds each and a busy tenant has thousands: the rows are split over the
/// cores (the review is the only work of the thread that calls this).
fn recorded(
    state_key: &crate::snapshots::SnapshotKey,
    tenant: &str,
    rows: &[StoredSnapshot],
) -> Vec<Recorded> {
    let open = |rows: &[StoredSnapshot]| -> Vec<Recorded> {
        rows.iter()
            .filter_map(|row| {
                let bytes = state_key.open(tenant, &row.decision_id, &row.snapshot)?;
                let snapshot = Snapshot::from_json_bytes(&bytes).ok()?;
                Some(Recorded {
                    decision_id: row.decision_id.clone(),
                    agent: snapshot.agent().map(str::to_owned),
                    snapshot,
                    at: timestamp(row.created_at_ms),
                })
            })
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || rows.len() < 512 {
        return open(rows);
    }
    let chunk = rows.len().div_ceil(cores);
    std::thread::scope(|scope| {
        let parts: Vec<_> = rows
            .chunks(chunk)
            .map(|part| scope.spawn(move || open(part)))
            .collect();
        // A part that failed fails the review (its task answers 500): never a replay that
        // silently saw fewer decisions.
        parts
            .into_iter()
            .flat_map(|part| {
                part.join()
                    .unwrap_or_else(|failed| std::panic::resume_unwind(failed))
            })
            .collect()
    })
}

/// Runs the review on a blocking thread: the proof, the replay and opening thousands of
/// snapshots take real CPU.
pub(crate) async fn run_review(
    state: &AppState,
    tenant: &str,
    proposer: Option<&str>,
    proposal: Proposal,
    mut gathered: Gathered,
    now: i64,
) -> Result<(Reviewed, Gathered), ApiError> {
    let key = state.snapshot_key().clone();
    let documents = Arc::clone(state.documents());
    let timeout = state.limits().proposal_solver_timeout;
    let (tenant, proposer) = (tenant.to_owned(), proposer.map(str::to_owned));
    // Held by the blocking task itself: a request that times out or goes away does not free
    // its slot while its review still runs, so reviews can never pile up past the cores.
    let slot = Arc::clone(state.reviews())
        .try_acquire_owned()
        .map_err(|_| ApiError::overloaded("too many proposal reviews at once; try again"))?;
    let outcome = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        // Newest first: the rows just read, then what this replica held.
        let mut recent = recorded(&key, &tenant, &gathered.snapshots);
        recent.append(&mut gathered.cached);
        recent.truncate(MAX_REPLAYED as usize);
        let replaced: Vec<Replaced> = gathered
            .replaced
            .iter()
            .filter_map(|version| {
                let fingerprint = match &version.known {
                    Ok(fingerprint) => fingerprint.clone(),
                    Err(source) => {
                        let fingerprint = warden_policy::review::fingerprint(source).ok()?;
                        documents.fingerprints.insert(
                            version.hash.clone(),
                            fingerprint.clone(),
                            Documents::FINGERPRINTS,
                        );
                        fingerprint
                    }
                };
                Some(Replaced {
                    fingerprint,
                    replaced_at: version.replaced_at,
                })
            })
            .collect();
        let live_document = match &gathered.live_document {
            Ok(document) => Ok(Arc::clone(document)),
            Err(source) => warden_policy::review::document(source).map(|document| {
                let document = Arc::new(document);
                documents.live.insert(
                    gathered.live.hash.clone(),
                    Arc::clone(&document),
                    Documents::LIVE,
                );
                document
            }),
        };
        let reviewed = live_document.and_then(|live_document| {
            let inputs = Inputs {
                tenant: &tenant,
                live_document: &live_document,
                live: &gathered.live.policy,
                proposer: proposer.as_deref(),
                evidence: &gathered.evidence,
                recent: &recent,
                history: &gathered.history,
                replaced: &replaced,
                now: timestamp(now),
                solver_timeout: timeout,
            };
            warden_policy::review::review(&proposal, &inputs).map(|mut review| {
                if tenant == DEFAULT_TENANT && review.status == Status::AutoApproved {
                    // Its impact was replayed over this tenant's decisions only, and it decides
                    // for every tenant without a policy of its own.
                    review.status = Status::NeedsHuman;
                    review.reasons.push(
                        "the `default` policy decides for every tenant without its own: a human \
                     decides every change to it"
                            .to_owned(),
                    );
                }
                let token = review.token(&gathered.live.hash);
                let mut stored = serde_json::to_value(&review).unwrap_or(Value::Null);
                if let Value::Object(fields) = &mut stored {
                    fields.insert(
                        "diff".into(),
                        serde_json::to_value(ChangesBody::of(&review.diff)).unwrap_or(Value::Null),
                    );
                }
                Reviewed {
                    review,
                    token,
                    stored: stored.to_string(),
                }
            })
        });
        documents.put_recent(&tenant, recent);
        (reviewed, gathered)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "the review task failed");
        ApiError::internal()
    })?;
    let (reviewed, gathered) = outcome;
    Ok((reviewed.map_err(review_error)?, gathered))
}

/// The answer to a proposal the review could not analyze.
fn review_error(e: ReviewError) -> ApiError {
    match e {
        ReviewError::Change { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "change_invalid",
            e.to_string(),
        ),
        ReviewError::Invalid(errors) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_invalid",
            format!(
                "the changed policy does not compile: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
    }
}

/// The figures events keep of a review: outcome and counts, never the rules' values.
pub(crate) fn counts(review: &Review) -> serde_json::Map<String, Value> {
    let flips: usize = review.impact.flips.iter().map(|f| f.count).sum();
    let detail = json!({
        "status": review.status.as_str(),
        "classification": review.classification.as_str(),
        "changes": review.changes.len(),
        "findings": review.findings.len(),
        "finding_codes": review.findings.iter().map(|f| f.code).collect::<Vec<_>>(),
        "counterexamples": review.counterexamples.len(),
        "replayed": review.impact.replayed,
        "flips": flips,
        "unknown": review.impact.unknown,
    });
    match detail {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

pub(crate) fn event(tenant: &str, kind: &str, agent: &str, now: i64, detail: Value) -> NewEvent {
    NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: tenant.to_owned(),
        kind: kind.to_owned(),
        agent: Some(agent.to_owned()),
        detail,
        ..NewEvent::default()
    }
}

/// What the proposal's status becomes after a review: the review's own at submit; a
/// re-review before a human's decision never applies by itself.
pub(crate) fn status_after(review: &Review, submitted: bool) -> &'static str {
    match review.status {
        Status::AutoApproved if submitted => proposal_status::AUTO_APPROVED,
        Status::AutoApproved | Status::NeedsHuman => proposal_status::NEEDS_HUMAN,
        Status::ReviseRequested => proposal_status::REVISE_REQUESTED,
        Status::Rejected => proposal_status::REJECTED,
    }
}

/// Asks the tenant's external reviewer, if it has one, and records what it said in the
/// stored analysis (`external_review`, and a reason when it made the outcome stricter).
pub(crate) async fn consult(
    state: &AppState,
    tenant: &str,
    id: &str,
    agent: &str,
    body: &Value,
    stored: &mut String,
    own: &'static str,
) -> Option<crate::reviewer::ExternalReview> {
    if !state.reviewers().configured(tenant) {
        return None;
    }
    let mut analysis: Value = serde_json::from_str(stored).unwrap_or(Value::Null);
    let external = state
        .reviewers()
        .ask(tenant, id, agent, body, &analysis, own)
        .await?;
    if let Value::Object(fields) = &mut analysis {
        if external.outcome(own) != own
            && let Some(Value::Array(reasons)) = fields.get_mut("reasons")
        {
            let verdict = external.verdict.map_or("", |v| v.as_str());
            reasons.push(Value::String(format!(
                "the external reviewer answered {verdict}: {}",
                external.reason
            )));
        }
        fields.insert("external_review".into(), external.to_json());
    }
    *stored = analysis.to_string();
    Some(external)
}

/// `POST /v1/proposals`: reads, rate-limits, reviews, stores, and applies when the review
/// approves.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    bytes: &[u8],
) -> Result<ProposalView, ApiError> {
    caller.require(&[Role::Agent])?;
    let agent = caller
        .agent
        .clone()
        .ok_or_else(|| ApiError::forbidden("this agent key names no agent"))?;
    let tenant = caller.tenant.clone();
    live_for_proposals(state, &tenant)?;
    let (proposal, body) = parse(bytes)?;
    let now = now_ms();
    let limit = state.limits().proposal_rate_limit;
    let rate_limited = || {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("an agent may submit {limit} proposals an hour; try again later"),
        );
        error.retry_after(60);
        error
    };
    // Checked before the review's work, and again where the proposal is written.
    let submitted = state
        .store()
        .count_proposals(&tenant, &agent, now - HOUR_MS)
        .await
        .map_err(store_error)?;
    if submitted >= u64::from(limit) {
        return Err(rate_limited());
    }
    for _ in 0..ATTEMPTS {
        let now = now_ms();
        let gathered = gather(state, &tenant, &proposal, now).await?;
        let (mut reviewed, gathered) = run_review(
            state,
            &tenant,
            Some(&agent),
            proposal.clone(),
            gathered,
            now,
        )
        .await?;
        let compiled = reviewed.review.compiled.take();
        let review = &reviewed.review;
        let id = crate::ids::ulid(now);
        let own = status_after(review, true);
        let external = consult(
            state,
            &tenant,
            &id,
            &agent,
            &body,
            &mut reviewed.stored,
            own,
        )
        .await;
        let status = external.as_ref().map_or(own, |e| e.outcome(own));
        let applies = status == proposal_status::AUTO_APPROVED;
        let record = ProposalRecord {
            id: id.clone(),
            tenant: tenant.clone(),
            agent: agent.clone(),
            key_id: caller.key_id.clone(),
            status: status.to_owned(),
            subject: review.subject.clone(),
            change_hash: review.change_hash.clone(),
            body: body.to_string(),
            review: reviewed.stored.clone(),
            review_token: reviewed.token.clone(),
            live_hash: gathered.live.hash.clone(),
            decided_by: (applies || status == proposal_status::REJECTED)
                .then(|| BY_REVIEW.to_owned()),
            created_at_ms: now,
            decided_at_ms: (applies || status == proposal_status::REJECTED).then_some(now),
            ..ProposalRecord::default()
        };
        let mut detail = counts(review);
        if let Some(external) = &external {
            // Both outcomes, so the log shows what the reviewer changed.
            detail.insert("status".into(), Value::from(status));
            detail.insert("review_status".into(), Value::from(own));
            detail.insert("external_review".into(), external.to_json());
        }
        detail.insert("proposal_id".into(), Value::String(id.clone()));
        detail.insert("key_id".into(), Value::String(caller.key_id.clone()));
        detail.insert(
            "change_hash".into(),
            Value::String(review.change_hash.clone()),
        );
        let mut submitted_event = event(
            &tenant,
            kind::PROPOSAL_SUBMITTED,
            &agent,
            now,
            Value::Object(detail.clone()),
        );
        submitted_event.policy_version = Some(gathered.live.policy.version().as_str().to_owned());
        submitted_event.policy_hash = Some(gathered.live.hash.clone());
        let mut events = vec![submitted_event];
        if let Some(why) = &review.security_event {
            // Flagged for an operator: who (agent and key) and what it amounted to.
            detail.insert("reason".into(), Value::String(why.clone()));
            detail.insert("evidence".into(), Value::from(proposal.evidence.len()));
            detail.insert("agent".into(), Value::String(agent.clone()));
            events.push(event(
                &tenant,
                kind::PROPOSAL_SECURITY_EVENT,
                &agent,
                now,
                Value::Object(detail),
            ));
        }
        let supersede = if review.subject.is_empty() {
            Vec::new()
        } else {
            pending_of_subject(state, &tenant, &agent, &review.subject)
                .await?
                .into_iter()
                .map(|old| Supersede {
                    event: event(
                        &tenant,
                        kind::PROPOSAL_SUPERSEDED,
                        &agent,
                        now,
                        json!({"proposal_id": old, "superseded_by": id}),
                    ),
                    id: old,
                })
                .collect()
        };
        let write = ProposalWrite::Insert {
            record: record.clone(),
            events,
            supersede,
            // Counted again in the insert's transaction: replicas cannot together pass it.
            limit: Some(ProposalLimit {
                since_ms: now - HOUR_MS,
                max: u64::from(limit),
            }),
        };
        if applies {
            let submission = Submission {
                tenant: tenant.clone(),
                source: review.candidate.source.clone(),
                author: caller.key_id.clone(),
                comment: Some(format!("proposal {id}, approved by its review")),
                cause: Cause::Proposal {
                    id: id.clone(),
                    analyzed: gathered.live.hash.clone(),
                    write: Box::new(write),
                },
                now_ms: now,
            };
            let submitted = match compiled {
                Some(policy) => state.policies().submit_compiled(submission, policy).await,
                None => state.policies().submit(submission).await,
            };
            match submitted {
                Ok(Submitted::Published(info)) => {
                    let mut applied = record;
                    applied.applied_revision = Some(info.revision);
                    applied.applied_version = Some(info.version);
                    return Ok(ProposalView::of(&applied, false));
                }
                Err(SubmitError::PolicyChanged | SubmitError::Contended) => continue,
                Err(SubmitError::ProposalStale(found))
                    if matches!(*found, ProposalWritten::Stale(None)) =>
                {
                    continue;
                }
                Err(SubmitError::ProposalStale(found))
                    if matches!(*found, ProposalWritten::OverLimit) =>
                {
                    return Err(rate_limited());
                }
                Ok(Submitted::Unchanged(_)) => {
                    tracing::error!("an auto-approved proposal changed nothing");
                    return Err(ApiError::internal());
                }
                Err(e) => return Err(crate::routes::lifecycle::submit_error(e)),
            }
        }
        match state
            .store()
            .write_proposal(write)
            .await
            .map_err(store_error)?
        {
            ProposalWritten::Written(stored) => return Ok(ProposalView::of(&stored, false)),
            ProposalWritten::Stale(None) => continue,
            ProposalWritten::OverLimit => return Err(rate_limited()),
            other => {
                tracing::error!(?other, "a new proposal was not written");
                return Err(ApiError::internal());
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        "the policy or the agent's other proposals kept changing; try again",
    ))
}

/// Ids of the agent's pending proposals about `subject`, sorted.
async fn pending_of_subject(
    state: &AppState,
    tenant: &str,
    agent: &str,
    subject: &str,
) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    for status in proposal_status::PENDING {
        let mut before = None;
        loop {
            let page = state
                .store()
                .proposals(&ProposalFilter {
                    tenant: tenant.to_owned(),
                    status: Some(status.to_owned()),
                    agent: Some(agent.to_owned()),
                    source: Some(proposal_source::AGENT.to_owned()),
                    limit: 1000,
                    before: before.take(),
                    ..ProposalFilter::default()
                })
                .await
                .map_err(store_error)?;
            ids.extend(
                page.iter()
                    .filter(|p| p.subject == subject)
                    .map(|p| p.id.clone()),
            );
            match page.last() {
                Some(last) if page.len() == 1000 => {
                    before = Some((last.created_at_ms, last.id.clone()));
                }
                _ => break,
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The approver acting: an approver key naming its user, never the proposing agent (nor
/// its key).
fn approver(caller: &Caller, record: &ProposalRecord) -> Result<String, ApiError> {
    caller.require(&[Role::Approver])?;
    let user = caller.user.clone().ok_or_else(|| {
        ApiError::forbidden("this approver key names no user; create one with `--user`")
    })?;
    if user == record.agent
        || caller.agent.as_deref() == Some(record.agent.as_str())
        || caller.key_id == record.key_id
    {
        return Err(ApiError::forbidden(
            "the proposing agent may not decide its own proposal",
        ));
    }
    Ok(user)
}

fn already_decided(record: &ProposalRecord) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_decided",
        format!("the proposal is {} already", record.status),
    )
}

/// A pending proposal of the tenant for an approver to decide.
async fn pending_for(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(ProposalRecord, String), ApiError> {
    caller.require(&[Role::Approver])?;
    let record = state
        .store()
        .proposal(&caller.tenant, id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no proposal `{id}`")))?;
    let user = approver(caller, &record)?;
    if !record.is_pending() {
        return Err(already_decided(&record));
    }
    Ok((record, user))
}

/// Approves: applies the candidate analyzed, if `token` is that analysis's and the live
/// policy is still the one analyzed; otherwise analyzes it again (`PolicyChanged`).
pub async fn approve(
    state: &AppState,
    caller: &Caller,
    id: &str,
    token: &str,
) -> Result<Approved, ApiError> {
    let (record, user) = pending_for(state, caller, id).await?;
    if token != record.review_token {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "review_token_mismatch",
            "the review token is not the one of this proposal's current analysis: read it again",
        ));
    }
    let live = live_for_proposals(state, &caller.tenant)?;
    if live.hash != record.live_hash {
        return re_review(state, caller, record).await;
    }
    let review: Value = serde_json::from_str(&record.review).unwrap_or(Value::Null);
    let Some(source) = review["candidate"]["source"].as_str().map(str::to_owned) else {
        tracing::error!(proposal = %record.id, "a stored review has no candidate");
        return Err(ApiError::internal());
    };
    let now = now_ms();
    let mut approved = record.clone();
    approved.status = proposal_status::APPROVED.to_owned();
    approved.decided_by = Some(user.clone());
    approved.decided_at_ms = Some(now);
    let decided = event(
        &caller.tenant,
        kind::PROPOSAL_DECIDED,
        &record.agent,
        now,
        json!({
            "proposal_id": record.id,
            "decision": "approved",
            "by": user,
            "key_id": caller.key_id,
            "classification": review["classification"],
        }),
    );
    let submission = Submission {
        tenant: caller.tenant.clone(),
        source,
        author: caller.key_id.clone(),
        comment: Some(format!("proposal {}, approved by {user}", record.id)),
        cause: Cause::Proposal {
            id: record.id.clone(),
            analyzed: record.live_hash.clone(),
            write: Box::new(ProposalWrite::Update {
                record: approved.clone(),
                expected: vec![record.status.clone()],
                events: vec![decided],
            }),
        },
        now_ms: now,
    };
    match state.policies().submit(submission).await {
        Ok(Submitted::Published(info)) => {
            approved.applied_revision = Some(info.revision);
            approved.applied_version = Some(info.version);
            Ok(Approved::Applied(ProposalView::of(&approved, true)))
        }
        Ok(Submitted::Unchanged(_)) => {
            tracing::error!(proposal = %record.id, "an approved proposal changed nothing");
            Err(ApiError::internal())
        }
        Err(SubmitError::ProposalStale(found)) => match *found {
            ProposalWritten::Stale(Some(now)) => Err(already_decided(&now)),
            _ => Err(ApiError::not_found(format!("no proposal `{id}`"))),
        },
        Err(SubmitError::PolicyChanged) => {
            // Another publish (perhaps another approver's of this very proposal) came first.
            let (record, _) = pending_for(state, caller, id).await?;
            re_review(state, caller, record).await
        }
        Err(e) => Err(crate::routes::lifecycle::submit_error(e)),
    }
}

/// Analyzes a pending proposal again against the live policy, stores the new analysis and
/// token (a proposal that no longer applies, or that the review now refuses, becomes
/// rejected), and answers it as `PolicyChanged`.
async fn re_review(
    state: &AppState,
    caller: &Caller,
    record: ProposalRecord,
) -> Result<Approved, ApiError> {
    let body: Value = serde_json::from_str(&record.body).unwrap_or(Value::Null);
    let proposal = Proposal::from_value(body).map_err(|e| {
        tracing::error!(proposal = %record.id, error = %e, "a stored proposal does not read");
        ApiError::internal()
    })?;
    let now = now_ms();
    let gathered = gather(state, &caller.tenant, &proposal, now).await?;
    let live_hash = gathered.live.hash.clone();
    let mut updated = record.clone();
    let mut detail = serde_json::Map::new();
    // An observed suggestion has no proposer: whoever's decisions it flips is "another".
    let proposer = (record.source() == proposal_source::AGENT).then_some(record.agent.as_str());
    match run_review(state, &caller.tenant, proposer, proposal, gathered, now).await {
        Ok((reviewed, _)) => {
            updated.status = status_after(&reviewed.review, false).to_owned();
            updated.review = reviewed.stored;
            updated.review_token = reviewed.token;
            detail = counts(&reviewed.review);
        }
        Err(e) if e.status() == StatusCode::UNPROCESSABLE_ENTITY => {
            updated.status = proposal_status::REJECTED.to_owned();
            updated.reason = Some(format!(
                "the change no longer applies to the live policy: {}",
                e.detail()
            ));
        }
        Err(e) => return Err(e),
    }
    updated.live_hash = live_hash;
    if updated.status == proposal_status::REJECTED {
        updated.decided_by = Some(BY_REVIEW.to_owned());
        updated.decided_at_ms = Some(now);
    }
    detail.insert("proposal_id".into(), Value::String(record.id.clone()));
    detail.insert("decision".into(), Value::from("re_reviewed"));
    detail.insert("status".into(), Value::String(updated.status.clone()));
    detail.insert("by".into(), Value::from(BY_REVIEW));
    let write = ProposalWrite::Update {
        record: updated,
        expected: vec![record.status.clone()],
        events: vec![event(
            &caller.tenant,
            kind::PROPOSAL_DECIDED,
            &record.agent,
            now,
            Value::Object(detail),
        )],
    };
    match state
        .store()
        .write_proposal(write)
        .await
        .map_err(store_error)?
    {
        ProposalWritten::Written(stored) => {
            Ok(Approved::PolicyChanged(ProposalView::of(&stored, true)))
        }
        ProposalWritten::Stale(Some(now)) => Err(already_decided(&now)),
        _ => Err(ApiError::not_found(format!("no proposal `{}`", record.id))),
    }
}

/// Rejects with a reason the agent reads.
pub async fn reject(
    state: &AppState,
    caller: &Caller,
    id: &str,
    reason: String,
) -> Result<ProposalView, ApiError> {
    let (record, user) = pending_for(state, caller, id).await?;
    let now = now_ms();
    let mut rejected = record.clone();
    rejected.status = proposal_status::REJECTED.to_owned();
    rejected.decided_by = Some(user.clone());
    rejected.decided_at_ms = Some(now);
    rejected.reason = Some(reason.clone());
    let write = ProposalWrite::Update {
        record: rejected,
        expected: vec![record.status.clone()],
        events: vec![event(
            &caller.tenant,
            kind::PROPOSAL_DECIDED,
            &record.agent,
            now,
            json!({
                "proposal_id": record.id,
                "decision": "rejected",
                "by": user,
                "key_id": caller.key_id,
                "reason": reason.chars().take(EVENT_REASON_CHARS).collect::<String>(),
            }),
        )],
    };
    match state
        .store()
        .write_proposal(write)
        .await
        .map_err(store_error)?
    {
        ProposalWritten::Written(stored) => Ok(ProposalView::of(&stored, true)),
        ProposalWritten::Stale(Some(now)) => Err(already_decided(&now)),
        _ => Err(ApiError::not_found(format!("no proposal `{id}`"))),
    }
}
