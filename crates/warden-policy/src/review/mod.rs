//! Reviewing an agent's proposed policy change (DESIGN §7): apply it to the live document,
//! refuse what is forbidden, prove with an SMT solver whether the candidate can let any action
//! through more permissively than the live policy, flag risky shapes, replay recent decisions,
//! and decide what happens to the proposal.
//!
//! Key decision: everything here is a pure function of its [`Inputs`]; the server gathers the
//! history, evidence and snapshots, and stores and applies what this returns. The review never
//! applies anything itself, and every verdict it cannot prove is `broadening`.
//!
//! `changes.rs` applies the operations, `forbidden.rs` holds the rules no proposal may break,
//! `prove.rs` encodes both policies for Z3 and turns models into counterexample actions,
//! `findings.rs` flags risky shapes and suggests narrower rules, and `impact.rs` replays
//! recorded decisions; `observed.rs` drafts the suggestions Warden makes itself from repeated
//! friction.

mod changes;
mod findings;
mod forbidden;
mod impact;
pub mod observed;
mod prove;

#[cfg(test)]
mod tests;

pub use changes::Change;
pub use prove::{Comparison, Counterexample, Side, compare};

use crate::action::Timestamp;
use crate::decision::Verdict;
use crate::document::PolicyErrors;
use crate::policy::{Policy, PolicyDiff, Snapshot};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The most changes one proposal may carry.
pub const MAX_CHANGES: usize = 20;
/// The most evidence references one proposal may carry.
pub const MAX_EVIDENCE: usize = 50;
/// The most changes each classified on its own (beyond, the whole verdict stands for each).
pub const MAX_PROVEN_STEPS: usize = 5;
/// How long a `rationale` or one `risks` entry may be, in characters.
pub const MAX_TEXT: usize = 4000;

/// A proposal as an agent submits it (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// Why the agent wants the change.
    pub rationale: String,
    /// What the agent thinks could go wrong.
    #[serde(default)]
    pub risks: Vec<String>,
    /// The agent's confidence in the change, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Decision ids (`decision:ID` or `ID`) that motivate it, e.g. from `/v1/denials`.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// The operations, applied in order to the live document.
    pub changes: Vec<Change>,
}

/// Why a proposal body is not a proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ProposalError {
    /// The field at fault, as a JSON path (`changes[2].rule`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Proposal {
    /// Reads and checks a proposal body.
    pub fn from_value(value: Value) -> Result<Self, ProposalError> {
        let proposal: Proposal =
            serde_path_to_error::deserialize(value).map_err(|e| ProposalError {
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        proposal.check()?;
        Ok(proposal)
    }

    fn check(&self) -> Result<(), ProposalError> {
        let bad = |field: &str, message: &str| {
            Err(ProposalError {
                field: field.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.rationale.trim().is_empty() {
            return bad("rationale", "must say why the change is needed");
        }
        if self.rationale.chars().count() > MAX_TEXT {
            return bad("rationale", "is longer than 4000 characters");
        }
        if let Some(i) = self.risks.iter().position(|r| r.chars().count() > MAX_TEXT) {
            return bad(&format!("risks[{i}]"), "is longer than 4000 characters");
        }
        if self.risks.len() > MAX_CHANGES {
            return bad("risks", "lists more than 20 risks");
        }
        if self.confidence.is_some_and(|c| !(0.0..=1.0).contains(&c)) {
            return bad("confidence", "must be between 0 and 1");
        }
        if self.evidence.len() > MAX_EVIDENCE {
            return bad("evidence", "names more than 50 decisions");
        }
        if let Some(i) = self.evidence.iter().position(|e| evidence_id(e).is_none()) {
            return bad(
                &format!("evidence[{i}]"),
                "must be a decision id, optionally as `decision:ID`",
            );
        }
        if self.changes.is_empty() {
            return bad("changes", "must hold at least one change");
        }
        if self.changes.len() > MAX_CHANGES {
            return bad("changes", "holds more than 20 changes");
        }
        Ok(())
    }

    /// The decision ids the evidence names.
    pub fn evidence_ids(&self) -> impl Iterator<Item = &str> {
        self.evidence.iter().filter_map(|e| evidence_id(e))
    }

    /// A digest of what the proposal changes (not why): the same operations give the same
    /// hash whatever the rationale, key order or whitespace.
    pub fn change_hash(&self) -> String {
        let changes = serde_json::to_value(&self.changes).unwrap_or(Value::Null);
        sha256_hex(canonical(&changes).as_bytes())
    }
}

fn evidence_id(e: &str) -> Option<&str> {
    let id = e.strip_prefix("decision:").unwrap_or(e);
    (!id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(id)
}

/// A decision the proposal names as evidence, as the server recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The decision id.
    pub decision_id: String,
    /// The agent that asked.
    pub agent: Option<String>,
    /// The action type.
    pub action_type: String,
    /// The target's type, when the audit log keeps it.
    pub target_type: Option<String>,
    /// The target's id, when the audit log keeps it.
    pub target_id: Option<String>,
    /// What was decided.
    pub effect: Verdict,
}

/// A recent decision's snapshot, for the impact replay.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The decision id.
    pub decision_id: String,
    /// The agent that asked.
    pub agent: Option<String>,
    /// What the decision read.
    pub snapshot: Snapshot,
    /// When it was decided (conditions over `now` replay at that time).
    pub at: Timestamp,
}

/// An earlier proposal of the tenant, for the history checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastProposal {
    /// Its id.
    pub id: String,
    /// [`Proposal::change_hash`].
    pub change_hash: String,
    /// Whether it was rejected (by the review or a human).
    pub rejected: bool,
    /// The decision ids it named.
    pub evidence: Vec<String>,
}

/// A policy version that stopped being live recently, for the drift check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// Its [`fingerprint`].
    pub fingerprint: String,
    /// When the version after it went live.
    pub replaced_at: Timestamp,
}

/// Everything a review reads besides the proposal.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The tenant the proposal is for.
    pub tenant: &'a str,
    /// The live policy's document, as [`document`] reads its source.
    pub live_document: &'a Value,
    /// The live policy.
    pub live: &'a Policy,
    /// The proposing agent, when an agent proposed it (not for observed suggestions).
    pub proposer: Option<&'a str>,
    /// The decisions the evidence names that the server found (unknown ids are left out).
    pub evidence: &'a [Evidence],
    /// Recent decisions to replay.
    pub recent: &'a [Recorded],
    /// The tenant's earlier proposals.
    pub history: &'a [PastProposal],
    /// Versions replaced in the last 24 hours.
    pub replaced: &'a [Replaced],
    /// Now, for the drift window and the replay of conditions without a recorded time.
    pub now: Timestamp,
    /// How long the solver may think about one question; past it, the answer is broadening.
    pub solver_timeout: Duration,
}

/// What happens to the proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Proven narrowing or neutral, no findings, touches only the proposer: apply now.
    AutoApproved,
    /// Could let something more through, or touches others: a human decides.
    NeedsHuman,
    /// Acceptable once narrowed: see the suggestion.
    ReviseRequested,
    /// Forbidden, a repeat, or a revert.
    Rejected,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::AutoApproved => "auto_approved",
            Status::NeedsHuman => "needs_human",
            Status::ReviseRequested => "revise_requested",
            Status::Rejected => "rejected",
        }
    }
}

/// What a change does to what the policy lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// Every action gets the same decision.
    Neutral,
    /// No action gets a more permissive decision, and some get a stricter one.
    Narrowing,
    /// Some action may get a more permissive decision (or the solver could not rule it out).
    Broadening,
    /// The change breaks a rule no proposal may break.
    Forbidden,
}

impl Classification {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Neutral => "neutral",
            Classification::Narrowing => "narrowing",
            Classification::Broadening => "broadening",
            Classification::Forbidden => "forbidden",
        }
    }
}

/// One change's own classification, as if it were proposed alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeReview {
    /// Its position in `changes`.
    pub index: usize,
    /// Its operation (`add_rule`, …).
    pub op: &'static str,
    /// What it does.
    pub classification: Classification,
    /// Why.
    pub reasons: Vec<String>,
}

/// A risky shape the review noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable code: `wildcard_grant`, `payload_only_condition`, `understated_risk`,
    /// `wider_than_evidence`, `beyond_limit`, `touches_other_agents`, `repeat_of_rejected`,
    /// `revert_of_recent_change`.
    pub code: &'static str,
    /// What it means, for a human.
    pub message: String,
    /// The rule it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// How recent decisions would change.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Impact {
    /// Snapshots replayed.
    pub replayed: usize,
    /// Decisions that stay the same.
    pub same: usize,
    /// Decisions whose snapshot does not hold a path the candidate reads.
    pub unknown: usize,
    /// Decisions that change, by kind.
    pub flips: Vec<Flip>,
}

/// Recorded decisions that would change from one effect to another.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flip {
    /// Under the live policy.
    pub from: Verdict,
    /// Under the candidate.
    pub to: Verdict,
    /// How many.
    pub count: usize,
    /// Up to five.
    pub examples: Vec<FlipExample>,
}

/// One flipped decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlipExample {
    /// The decision.
    pub decision_id: String,
    /// Who asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The action type.
    pub action_type: String,
}

/// The candidate document, when the changes make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// Its source, as it would be published.
    pub source: String,
    /// Its version.
    pub version: String,
}

/// The whole analysis of one proposal.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    /// The outcome.
    pub status: Status,
    /// What all the changes together do.
    pub classification: Classification,
    /// Why: the forbidden rule broken, the proof's verdict, the findings that decided.
    pub reasons: Vec<String>,
    /// Each change on its own.
    pub changes: Vec<ChangeReview>,
    /// For a broadening change: up to three actions the candidate treats more permissively,
    /// each reproduced by evaluating both policies.
    pub counterexamples: Vec<Counterexample>,
    /// Risky shapes.
    pub findings: Vec<Finding>,
    /// The replay of recent decisions.
    pub impact: Impact,
    /// On `revise_requested`: the narrower changes that would be acceptable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<Vec<Change>>,
    /// The candidate policy.
    pub candidate: Candidate,
    /// [`Proposal::change_hash`].
    pub change_hash: String,
    /// What the proposal is about, for superseding: the action patterns of the rules it adds
    /// or changes, and the target its evidence names (`ticket.refund@T-1`); a newer pending
    /// proposal of the same agent with the same subject replaces an older one.
    pub subject: String,
    /// When the proposal is a security event (a repeat of a rejected change, a revert): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_event: Option<String>,
    /// The semantic diff from the live document to the candidate (not part of the analysis
    /// the token covers: it follows from the two documents).
    #[serde(skip)]
    pub diff: PolicyDiff,
    /// The candidate, compiled: what applying the proposal puts in force, so a publish
    /// need not compile it again (`None` once taken).
    #[serde(skip)]
    pub compiled: Option<Policy>,
}

impl Review {
    /// The token a human presents to approve exactly this analysis: a digest of the live
    /// version's hash, the candidate and the analysis.
    pub fn token(&self, live_hash: &str) -> String {
        let analysis = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut text = String::with_capacity(256);
        text.push_str(live_hash);
        text.push('\0');
        text.push_str(&canonical(&analysis));
        sha256_hex(text.as_bytes())
    }
}

/// Why a proposal could not be reviewed at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReviewError {
    /// An operation cannot be applied (an unknown rule id, a bad JSON pointer, …).
    #[error("changes[{index}]: {message}")]
    Change {
        /// Which change.
        index: usize,
        /// Why.
        message: String,
    },
    /// The candidate is not a valid policy.
    #[error("the changed policy is not valid: {0}")]
    Invalid(PolicyErrors),
}

/// Reviews `proposal` against the live policy in `inputs`.
pub fn review(proposal: &Proposal, inputs: &Inputs<'_>) -> Result<Review, ReviewError> {
    let live = inputs.live;
    let live_doc = inputs.live_document;
    let mut doc = live_doc.clone();
    changes::apply(&mut doc, &proposal.changes, 0)?;
    let (source, cand_doc, cand) = changes::finish(doc, live)?;
    let candidate = Candidate {
        source,
        version: cand.version().to_string(),
    };
    let change_hash = proposal.change_hash();
    let mut reasons = Vec::new();
    let mut findings = Vec::new();

    // Each change on its own: forbidden, or what the proof says of its step.
    let step = |from: &Policy, from_doc: &Value, to: &Policy, to_doc: &Value| {
        let forbidden = forbidden::violations(from, from_doc, to, to_doc);
        if forbidden.is_empty() {
            compare(from, to, inputs.tenant, inputs.solver_timeout)
        } else {
            Comparison::forbidden(forbidden)
        }
    };
    let forbidden = forbidden::violations(live, live_doc, &cand, &cand_doc);
    if !forbidden.is_empty() {
        reasons.extend(forbidden.iter().map(|f| format!("forbidden: {f}")));
        let whole = || Comparison::forbidden(forbidden.clone());
        let changes = per_change(proposal, inputs, whole, step)?;
        return Ok(Review {
            status: Status::Rejected,
            classification: Classification::Forbidden,
            reasons,
            changes,
            counterexamples: Vec::new(),
            findings,
            impact: Impact::default(),
            suggestion: None,
            candidate,
            change_hash,
            subject: String::new(),
            security_event: None,
            diff: PolicyDiff::of_documents(live_doc, live, &cand_doc, &cand),
            compiled: Some(cand),
        });
    }

    let proof = compare(live, &cand, inputs.tenant, inputs.solver_timeout);
    let changes = per_change(proposal, inputs, || proof.clone(), step)?;
    reasons.extend(proof.reasons.iter().cloned());
    let classification = proof.classification;
    let touched = findings::touched(live_doc, &cand, &cand_doc);
    let subject = subject(&touched, inputs.evidence);
    findings.extend(findings::shapes(&touched));
    if classification == Classification::Broadening && proposal.risks.is_empty() {
        findings.push(Finding {
            code: "understated_risk",
            message: "the change can let more through, yet the proposal lists no risks".into(),
            rule: None,
        });
    }
    let (impact, others) =
        impact::replay(live, &cand, inputs.tenant, inputs.recent, inputs.proposer);
    if others {
        findings.push(Finding {
            code: "touches_other_agents",
            message: "recent decisions of other agents than the proposer would change".into(),
            rule: None,
        });
    }
    let mut narrowed = cand_doc.clone();
    let revise = findings::narrow(live, &touched, inputs.evidence, &mut narrowed);
    let suggestion = (!revise.is_empty())
        .then(|| findings::changes_between(live_doc, &narrowed))
        .filter(|s| !s.is_empty());
    findings.extend(revise);

    let security_event = history(proposal, inputs, &change_hash, live_doc, &cand_doc);
    let status = if let Some(event) = &security_event {
        reasons.push(event.clone());
        Status::Rejected
    } else if suggestion.is_some() {
        reasons.push("a narrower change would do: see the suggestion".into());
        Status::ReviseRequested
    } else if classification == Classification::Broadening {
        Status::NeedsHuman
    } else if !findings.is_empty() {
        reasons.push(format!(
            "a human must look: {}",
            findings
                .iter()
                .map(|f| f.code)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Status::NeedsHuman
    } else {
        Status::AutoApproved
    };
    Ok(Review {
        status,
        classification,
        reasons,
        changes,
        counterexamples: proof.counterexamples,
        findings,
        impact,
        suggestion,
        candidate,
        change_hash,
        subject,
        security_event,
        diff: PolicyDiff::of_documents(live_doc, live, &cand_doc, &cand),
        compiled: Some(cand),
    })
}

fn subject(touched: &[&crate::policy::Rule], evidence: &[Evidence]) -> String {
    let mut patterns: Vec<&str> = touched
        .iter()
        .flat_map(|r| r.actions().iter().map(|g| g.as_str()))
        .collect();
    patterns.sort_unstable();
    patterns.dedup();
    let mut out = patterns.join(",");
    let mut targets = evidence.iter().filter_map(|e| e.target_id.as_deref());
    if let Some(first) = targets.next()
        && targets.all(|t| t == first)
    {
        out.push('@');
        out.push_str(first);
    }
    out
}

/// Each change's own classification: the step from the document before it to the document
/// after it. A single change is the whole proposal, so it is neither applied nor proven
/// twice: `whole` answers for it.
fn per_change(
    proposal: &Proposal,
    inputs: &Inputs<'_>,
    whole: impl FnOnce() -> Comparison,
    mut classify: impl FnMut(&Policy, &Value, &Policy, &Value) -> Comparison,
) -> Result<Vec<ChangeReview>, ReviewError> {
    if let [change] = proposal.changes.as_slice() {
        let c = whole();
        return Ok(vec![ChangeReview {
            index: 0,
            op: change.op(),
            classification: c.classification,
            reasons: c.reasons,
        }]);
    }
    // Past a handful, proving each step would multiply the solver's time limit by the
    // number of changes; the whole proposal's verdict stands for each of them instead.
    if proposal.changes.len() > MAX_PROVEN_STEPS {
        let c = whole();
        let reason = format!(
            "not proven on its own: a proposal of more than {MAX_PROVEN_STEPS} changes is classified as a whole"
        );
        return Ok(proposal
            .changes
            .iter()
            .enumerate()
            .map(|(index, change)| ChangeReview {
                index,
                op: change.op(),
                classification: c.classification,
                reasons: vec![reason.clone()],
            })
            .collect());
    }
    let mut out = Vec::with_capacity(proposal.changes.len());
    let mut before_doc = inputs.live_document.clone();
    let mut before = inputs.live.clone();
    for (i, change) in proposal.changes.iter().enumerate() {
        let mut doc = before_doc.clone();
        changes::apply(&mut doc, std::slice::from_ref(change), i)?;
        let (_, after_doc, after) = changes::finish(doc, &before)?;
        let c = classify(&before, &before_doc, &after, &after_doc);
        out.push(ChangeReview {
            index: i,
            op: change.op(),
            classification: c.classification,
            reasons: c.reasons,
        });
        (before, before_doc) = (after, after_doc);
    }
    Ok(out)
}

/// Step 7: a repeat of a rejected change with no new evidence, or a revert of a version
/// that went live in the last 24 hours.
fn history(
    proposal: &Proposal,
    inputs: &Inputs<'_>,
    change_hash: &str,
    live_doc: &Value,
    cand_doc: &Value,
) -> Option<String> {
    let evidence: Vec<&str> = proposal.evidence_ids().collect();
    if let Some(past) = inputs.history.iter().find(|p| {
        p.rejected
            && p.change_hash == change_hash
            && evidence
                .iter()
                .all(|e| p.evidence.iter().any(|old| old == e))
    }) {
        return Some(format!(
            "the same change was rejected before (proposal {}) and no new evidence is given",
            past.id
        ));
    }
    let cand = fingerprint_of(cand_doc);
    if cand == fingerprint_of(live_doc) {
        return None;
    }
    let day = jiff::SignedDuration::from_hours(24);
    inputs
        .replaced
        .iter()
        .filter(|r| inputs.now.get().duration_since(r.replaced_at.get()) <= day)
        .find(|r| r.fingerprint == cand)
        .map(|_| {
            "the change reverts a policy version replaced in the last 24 hours (drift)".to_owned()
        })
}

/// What a policy document says, whatever its format, layout or `version`: the digest of its
/// canonical JSON without `version`. Two versions with one fingerprint decide alike, so a
/// candidate with a replaced version's fingerprint reverts to it.
pub fn fingerprint(source: &str) -> Result<String, ReviewError> {
    document(source).map(|doc| fingerprint_of(&doc))
}

/// A policy source (YAML or JSON) as the document a review edits and compares.
pub fn document(source: &str) -> Result<Value, ReviewError> {
    changes::document(source)
}

fn fingerprint_of(doc: &Value) -> String {
    let mut text = String::new();
    canonical_into(doc, &mut text, Some("version"));
    sha256_hex(text.as_bytes())
}

/// JSON with object keys sorted and no whitespace, for digests.
pub(crate) fn canonical(value: &Value) -> String {
    let mut out = String::new();
    canonical_into(value, &mut out, None);
    out
}

/// Writes `value` as [`canonical`] JSON, leaving out the top-level field `skip`.
fn canonical_into(value: &Value, out: &mut String, skip: Option<&str>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().filter(|k| Some(k.as_str()) != skip).collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_into(&map[k], out, None);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_into(item, out, None);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
