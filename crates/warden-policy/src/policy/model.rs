//! The policy's model: rules, effects, tiers, versions, approvals, budgets and the other
//! validated pieces a compiled policy is made of.
//!
//! Values with an invariant (`RuleId`, `Version`) can only be built through their checks.

use super::snapshot::Reads;
use crate::decision::{Obligations, Verdict};
use crate::expr::Expr;
use crate::glob::Glob;
use crate::template::Template;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A rule identifier: `[a-z0-9-]+`, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(String);

impl RuleId {
    /// Validates an id.
    pub fn new(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > 64 {
            return Err(format!("rule id `{id}` must be 1 to 64 characters"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("rule id `{id}` may only contain a-z, 0-9 and `-`"));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Permit the action.
    Allow,
    /// Forbid the action.
    Deny,
    /// Hold the action for a human.
    RequireApproval,
    /// Add obligations to an allow or require_approval.
    Modify,
}

impl Effect {
    /// The name used in policies and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::RequireApproval => "require_approval",
            Effect::Modify => "modify",
        }
    }

    pub(super) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            "require_approval" => Effect::RequireApproval,
            "modify" => Effect::Modify,
            _ => return None,
        })
    }

    /// Combining order: deny > require_approval > allow > modify.
    pub(super) fn strength(self) -> u8 {
        match self {
            Effect::Deny => 3,
            Effect::RequireApproval => 2,
            Effect::Allow => 1,
            Effect::Modify => 0,
        }
    }
}

impl From<Verdict> for Effect {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => Effect::Allow,
            Verdict::Deny => Effect::Deny,
            Verdict::RequireApproval => Effect::RequireApproval,
        }
    }
}

/// Autonomy tiers, from least to most autonomous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Read actions only.
    Observe,
    /// Read actions only; recommendations are not executable.
    Recommend,
    /// Every write is forced into `mode: draft` (an obligation).
    Draft,
    /// Anything not marked production.
    Sandbox,
    /// Production actions with approval.
    ProdGated,
}

impl Tier {
    /// Every tier, in order.
    pub const ALL: [Tier; 5] = [
        Tier::Observe,
        Tier::Recommend,
        Tier::Draft,
        Tier::Sandbox,
        Tier::ProdGated,
    ];

    /// The name used in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Observe => "observe",
            Tier::Recommend => "recommend",
            Tier::Draft => "draft",
            Tier::Sandbox => "sandbox",
            Tier::ProdGated => "prod_gated",
        }
    }

    /// Parses a tier name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// A semantic version `MAJOR.MINOR.PATCH[-PRE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    text: Arc<str>,
    parts: (u64, u64, u64),
}

impl Version {
    /// Parses a version.
    pub fn parse(text: &str) -> Option<Self> {
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        if pre.is_some_and(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }) {
            return None;
        }
        let mut numbers = core.split('.').map(|n| {
            (!n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0')))
            .then(|| n.parse::<u64>().ok())
            .flatten()
        });
        let parts = (numbers.next()??, numbers.next()??, numbers.next()??);
        if numbers.next().is_some() {
            return None;
        }
        Some(Self {
            text: Arc::from(text),
            parts,
        })
    }

    /// Major, minor and patch numbers.
    pub fn parts(&self) -> (u64, u64, u64) {
        self.parts
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Who must approve a held action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequirement {
    /// Approver groups; any one of them may approve. Empty means any approver.
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub quorum: u32,
    /// How long the approval stays open before it expires (and so denies).
    pub expires_in: Duration,
}

impl Default for ApprovalRequirement {
    fn default() -> Self {
        Self {
            approvers: Vec::new(),
            quorum: 1,
            expires_in: Duration::from_secs(3600),
        }
    }
}

/// The permit an allow carries (DESIGN §5): how long it is good for and how many times an
/// executor may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermitSettings {
    /// How long after the decision the permit expires.
    pub expires_in: Duration,
    /// How many verifications it allows.
    pub max_uses: u32,
}

impl PermitSettings {
    /// The longest `permit.expires_in` a rule may set. Bounded so that a rotated-out
    /// signing key can be dropped a known time after rotation.
    pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);
    /// The most `permit.max_uses` a rule may set.
    pub const MAX_USES: u32 = 1000;
}

impl Default for PermitSettings {
    fn default() -> Self {
        Self {
            expires_in: Duration::from_secs(5 * 60),
            max_uses: 1,
        }
    }
}

/// Where a rule applies, besides its actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only actions from this app.
    pub app: Option<String>,
    /// Only actions from this workflow.
    pub workflow: Option<String>,
}

/// Resource limit names accepted by `set.limits` and budgets.
pub const LIMIT_NAMES: [&str; 5] = ["tool_calls", "tokens", "cost_usd", "turns", "duration"];

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(super) id: RuleId,
    pub(super) description: Option<String>,
    pub(super) actions: Vec<Glob>,
    pub(super) agents: Vec<Glob>,
    pub(super) tiers: Vec<Tier>,
    pub(super) scope: Scope,
    pub(super) when: Option<(String, Expr)>,
    pub(super) effect: Effect,
    pub(super) reason: Option<Template>,
    pub(super) reason_source: Option<String>,
    pub(super) confidence_adjustment: f64,
    pub(super) approval: Option<ApprovalRequirement>,
    pub(super) permit: Option<PermitSettings>,
    pub(super) set: Obligations,
    pub(super) protected: bool,
    pub(super) preset: Option<Tier>,
    /// The action paths the rule reads, for snapshots and replays.
    pub(super) reads: Reads,
}

impl Rule {
    /// The id.
    pub fn id(&self) -> &RuleId {
        &self.id
    }
    /// The description.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// Action patterns.
    pub fn actions(&self) -> &[Glob] {
        &self.actions
    }
    /// Agent patterns; empty means any agent.
    pub fn agents(&self) -> &[Glob] {
        &self.agents
    }
    /// Tiers; empty means any tier (and agents without one).
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }
    /// App and workflow scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
    /// The condition's CEL source.
    pub fn when(&self) -> Option<&str> {
        self.when.as_ref().map(|(s, _)| s.as_str())
    }
    /// The compiled condition.
    pub(crate) fn condition(&self) -> Option<&Expr> {
        self.when.as_ref().map(|(_, e)| e)
    }
    /// The effect.
    pub fn effect(&self) -> Effect {
        self.effect
    }
    /// The reason template as written.
    pub fn reason(&self) -> Option<&str> {
        self.reason_source.as_deref()
    }
    /// Added to the confidence when the rule matches.
    pub fn confidence_adjustment(&self) -> f64 {
        self.confidence_adjustment
    }
    /// Approval settings of a require_approval rule.
    pub fn approval(&self) -> Option<&ApprovalRequirement> {
        self.approval.as_ref()
    }
    /// Permit settings of an allow rule, when it sets them.
    pub fn permit(&self) -> Option<PermitSettings> {
        self.permit
    }
    /// What a modify rule sets.
    pub fn set(&self) -> &Obligations {
        &self.set
    }
    /// Whether proposals may never remove or weaken this rule.
    pub fn is_protected(&self) -> bool {
        self.protected
    }
    /// The tier whose preset (or `tiers:` override) produced this rule.
    pub fn preset(&self) -> Option<Tier> {
        self.preset
    }
}

/// Whose consumption a budget or rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// One agent run (`run_id`).
    Run,
    /// One agent.
    Agent,
    /// The whole tenant.
    Tenant,
}

impl Per {
    /// The name used in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Run => "run",
            Per::Agent => "agent",
            Per::Tenant => "tenant",
        }
    }
}

/// Resource ceilings; enforced by the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Tool invocations.
    pub tool_calls: Option<u64>,
    /// Model tokens.
    pub tokens: Option<u64>,
    /// Money, in US dollars.
    pub cost_usd: Option<f64>,
    /// Actions asked about (one per decision).
    pub turns: Option<u64>,
    /// Wall-clock time.
    pub duration: Option<Duration>,
}

/// A spending budget; enforced by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Unique id.
    pub id: String,
    /// What it counts per.
    pub per: Per,
    /// The ceilings.
    pub limits: Limits,
    /// A ceiling on how many matching actions are allowed (`count: {actions, limit}`).
    pub count: Option<CountLimit>,
}

/// A budget's ceiling on the number of allowed actions of some types.
#[derive(Debug, Clone, PartialEq)]
pub struct CountLimit {
    /// Which actions count.
    pub actions: Vec<Glob>,
    /// How many may be allowed.
    pub limit: u64,
}

/// A rate limit; enforced by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Unique id.
    pub id: String,
    /// Which actions count.
    pub actions: Vec<Glob>,
    /// What it counts per.
    pub per: Per,
    /// Actions allowed per window.
    pub limit: u64,
    /// The window.
    pub window: Duration,
}

/// Ceilings no proposal may exceed (`proposal_limits:`); a proposal past one is asked to
/// revise with the value clamped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProposalLimits {
    /// The highest budget limits a proposal may set.
    pub max_budget: Limits,
    /// The longest `approval.expires_in` a proposal may set.
    pub max_approval_expiry: Option<Duration>,
}

/// A plain-language section for the agent's prompt; never enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guidance {
    /// Heading.
    pub name: String,
    /// Text.
    pub content: String,
}
