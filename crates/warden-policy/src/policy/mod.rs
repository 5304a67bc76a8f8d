//! A validated, compiled policy and its evaluator.
//!
//! Compilation does all the work that does not depend on the action: conditions and reason
//! templates are compiled, tier presets become ordinary rules, and rules are indexed by action
//! name so that evaluation only looks at rules that can match. For every action name the policy
//! mentions literally, the full candidate list (exact, prefix and general patterns) is
//! precomputed, so the common case costs one hash lookup before conditions run.
//!
//! `model.rs` holds the pieces, `compile.rs` validates a document into them, `presets.rs`
//! writes the tier presets as ordinary rules, `agents.rs` maps agents to tiers, `index.rs`
//! finds a type's candidate rules, `evaluate.rs` evaluates and combines, and `snapshot.rs`
//! records what a decision read and replays a candidate policy over such records.

mod agents;
mod charges;
mod compile;
mod diff;
mod digest;
mod evaluate;
mod index;
mod missing;
mod model;
mod presets;
mod snapshot;

#[cfg(test)]
mod tests;

pub use crate::audit::AuditSpec;
pub use charges::{Charge, Counter, Expiry, LimitKind};
pub use diff::{DiffError, DiffSide, FieldChange, PolicyDiff, RuleChange, RuleEntry};
pub use missing::MissingRule;
pub(crate) use missing::cel_string;
pub use model::{
    ApprovalRequirement, Budget, CountLimit, Effect, Guidance, LIMIT_NAMES, Limits, Per,
    PermitSettings, ProposalLimits, RateLimit, Rule, RuleId, Scope, Tier, Version,
};
pub use snapshot::{Replayed, Snapshot, SnapshotError};

use crate::decision::Verdict;
use crate::document::{self, PolicyErrors, RawPolicy};
use crate::glob::Glob;
use agents::AgentMap;
use index::Index;
use snapshot::Plan;

/// A validated, compiled policy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Policy {
    version: Version,
    default: Verdict,
    agents: AgentMap,
    production: Vec<Glob>,
    rules: Vec<Rule>,
    index: Index,
    budgets: Vec<Budget>,
    rate_limits: Vec<RateLimit>,
    audit: AuditSpec,
    proposals: bool,
    proposal_limits: ProposalLimits,
    guidance: Vec<Guidance>,
    /// What this policy's snapshots hold, worked out once.
    snapshots: Plan,
}

impl Policy {
    /// Parses, validates and compiles a YAML or JSON policy document. Every semantic problem
    /// is reported, each with its line and column.
    pub fn parse(source: &str) -> Result<Self, PolicyErrors> {
        Self::parse_with(source, None)
    }

    fn parse_with(source: &str, like: Option<&Policy>) -> Result<Self, PolicyErrors> {
        // JSON (every version a proposal publishes) is read as strict JSON, much faster than
        // through the YAML loader and to the same document; only a document with a problem
        // is read again through the loader, for errors with positions.
        if source.trim_start().starts_with('{')
            && let Ok(doc) = crate::json::parse_strict(source.as_bytes())
            && let Ok(policy) = Self::from_document(&doc, like)
        {
            return Ok(policy);
        }
        let node = document::load(source)?;
        let raw: RawPolicy = document::from_node(&node)?;
        compile::compile(raw, like)
    }

    /// A document given as JSON, compiled like [`Policy::parse_like`] without its text;
    /// errors carry no positions (parse the text for those).
    pub(crate) fn from_document(
        doc: &serde_json::Value,
        like: Option<&Policy>,
    ) -> Result<Self, PolicyErrors> {
        let node = document::json_to_node(doc);
        let raw: RawPolicy = document::from_node(&node)?;
        compile::compile(raw, like)
    }

    /// [`Policy::parse`] for a document that is mostly `like` (a new version of it, a
    /// proposal's candidate): conditions and reason templates written exactly as in `like`
    /// are reused instead of compiled again. The result is the same policy either way.
    pub fn parse_like(source: &str, like: &Policy) -> Result<Self, PolicyErrors> {
        Self::parse_with(source, Some(like))
    }

    /// The document's version.
    pub fn version(&self) -> &Version {
        &self.version
    }
    /// The effect when no rule decides.
    pub fn default_verdict(&self) -> Verdict {
        self.default
    }
    /// Every rule, tier presets last, in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
    /// Action patterns that count as production for the tier presets.
    pub fn production(&self) -> &[Glob] {
        &self.production
    }
    /// Budgets.
    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }
    /// Rate limits.
    pub fn rate_limits(&self) -> &[RateLimit] {
        &self.rate_limits
    }
    /// Audit keep and redact lists.
    pub fn audit(&self) -> &AuditSpec {
        &self.audit
    }
    /// Whether agents may propose changes.
    pub fn proposals_enabled(&self) -> bool {
        self.proposals
    }
    /// Ceilings no proposal may exceed.
    pub fn proposal_limits(&self) -> &ProposalLimits {
        &self.proposal_limits
    }
    /// Guidance sections.
    pub fn guidance(&self) -> &[Guidance] {
        &self.guidance
    }

    /// The tier bound to an agent id: the most specific matching `agents:` entry.
    pub fn tier_of(&self, agent: &str) -> Option<Tier> {
        self.agents.tier_of(agent)
    }

    /// The `agents:` entries in the order `tier_of` tries them: exact ids (sorted), then
    /// patterns most specific first.
    pub fn agent_entries(&self) -> Vec<(&Glob, Tier)> {
        self.agents.entries()
    }
}
