//! A validated, compiled policy and its evaluator.
//!
//! Compilation does all the work that does not depend on the action: conditions and reason
//! templates are compiled, tier presets become ordinary rules, and rules are indexed by action
//! name so that evaluation only looks at rules that can match. For every action name the policy
//! mentions literally, the full candidate list (exact, prefix and general patterns) is
//! precomputed, so the common case costs one hash lookup before conditions run.

use crate::action::{Action, Env};
use crate::decision::{
    ConfidenceChange, Decision, EvaluationFailure, Obligations, Reason, ReasonCode, Verdict,
};
use crate::document::{self, Entries, PolicyError, PolicyErrors, RawPolicy, RawRule};
use crate::expr::{Expr, Vars};
use crate::glob::{Glob, GlobKind};
use crate::template::Template;
use marked_yaml::{Span, Spanned};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
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
        if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
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

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            "require_approval" => Effect::RequireApproval,
            "modify" => Effect::Modify,
            _ => return None,
        })
    }

    /// Combining order: deny > require_approval > allow > modify.
    fn strength(self) -> u8 {
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
    pub const ALL: [Tier; 5] = [Tier::Observe, Tier::Recommend, Tier::Draft, Tier::Sandbox, Tier::ProdGated];

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
        if pre.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')) {
            return None;
        }
        let mut numbers = core.split('.').map(|n| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0')))
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
            expires_in: Duration::from_secs(24 * 3600),
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
pub const LIMIT_NAMES: [&str; 4] = ["tool_calls", "tokens", "cost_usd", "duration"];

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    id: RuleId,
    description: Option<String>,
    actions: Vec<Glob>,
    agents: Vec<Glob>,
    tiers: Vec<Tier>,
    scope: Scope,
    when: Option<(String, Expr)>,
    effect: Effect,
    reason: Option<Template>,
    reason_source: Option<String>,
    confidence_adjustment: f64,
    approval: Option<ApprovalRequirement>,
    set: Obligations,
    protected: bool,
    preset: Option<Tier>,
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

    fn applies(&self, agent: Option<&str>, tier: Option<Tier>, action: &Action) -> bool {
        if !self.agents.is_empty() && !agent.is_some_and(|a| self.agents.iter().any(|g| g.matches(a))) {
            return false;
        }
        if !self.tiers.is_empty() && !tier.is_some_and(|t| self.tiers.contains(&t)) {
            return false;
        }
        if let Some(app) = &self.scope.app
            && action.app.as_ref() != Some(app)
        {
            return false;
        }
        if let Some(workflow) = &self.scope.workflow
            && action.workflow.as_ref() != Some(workflow)
        {
            return false;
        }
        true
    }

    fn message(&self, vars: &Vars<'_>) -> String {
        match &self.reason {
            Some(template) => template.render(vars),
            None => {
                let verb = match self.effect {
                    Effect::Allow => "allows",
                    Effect::Deny => "denies",
                    Effect::RequireApproval => "requires approval for",
                    Effect::Modify => "adds obligations to",
                };
                format!("rule `{}` {verb} `{}`", self.id, vars.action.kind)
            }
        }
    }
}

/// Whose consumption a budget or rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// What the audit log may keep verbatim and what it must mask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSpec {
    /// Dotted paths (`action.target.id`, `context.ticket.priority`) stored as-is.
    pub keep: Vec<String>,
    /// Dotted paths masked wherever they would appear.
    pub redact: Vec<String>,
}

/// A plain-language section for the agent's prompt; never enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guidance {
    /// Heading.
    pub name: String,
    /// Text.
    pub content: String,
}

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
    guidance: Vec<Guidance>,
}

impl Policy {
    /// Parses, validates and compiles a YAML or JSON policy document. Every semantic problem
    /// is reported, each with its line and column.
    pub fn parse(source: &str) -> Result<Self, PolicyErrors> {
        let node = document::load(source)?;
        let raw: RawPolicy = document::from_node(&node)?;
        compile(raw)
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
    /// Guidance sections.
    pub fn guidance(&self) -> &[Guidance] {
        &self.guidance
    }

    /// The tier bound to an agent id: the most specific matching `agents:` entry.
    pub fn tier_of(&self, agent: &str) -> Option<Tier> {
        self.agents.tier_of(agent)
    }

    /// Evaluates an action. Never fails: an evaluation error is a deny with reason code
    /// `evaluation_error`, its detail in [`Decision::failure`].
    pub fn evaluate(&self, action: &Action, env: &Env) -> Decision {
        let agent = action.agent.as_deref();
        let tier = agent.and_then(|a| self.agents.tier_of(a));
        let vars = Vars {
            action,
            agent,
            tier: tier.map(Tier::as_str),
            env,
        };
        let candidates = self.index.candidates(action.kind.as_str());
        let mut matched: Vec<&Rule> = Vec::with_capacity(candidates.len());
        for &i in candidates.iter() {
            let rule = &self.rules[i as usize];
            if !rule.applies(agent, tier, action) {
                continue;
            }
            let hit = match &rule.when {
                None => true,
                Some((_, expr)) => match expr.eval_bool(&vars) {
                    Ok(hit) => hit,
                    Err(e) => return self.failed(rule, e.to_string(), action),
                },
            };
            if hit {
                matched.push(rule);
            }
        }
        self.combine(&matched, &vars)
    }

    fn combine(&self, matched: &[&Rule], vars: &Vars<'_>) -> Decision {
        let strongest = matched
            .iter()
            .map(|r| r.effect)
            .filter(|e| *e != Effect::Modify)
            .max_by_key(|e| e.strength());
        let verdict = match strongest {
            Some(Effect::Deny) => Verdict::Deny,
            Some(Effect::RequireApproval) => Verdict::RequireApproval,
            Some(Effect::Allow) => Verdict::Allow,
            Some(Effect::Modify) | None => self.default,
        };
        let mut ordered: Vec<&Rule> = matched.to_vec();
        // Stable: rules of equal strength keep policy order.
        ordered.sort_by_key(|r| std::cmp::Reverse(r.effect.strength()));
        let mut reasons: Vec<Reason> = ordered
            .iter()
            .map(|r| Reason {
                rule: Some(r.id.clone()),
                effect: r.effect,
                code: ReasonCode::PolicyRule,
                message: r.message(vars),
            })
            .collect();
        if strongest.is_none() {
            reasons.push(Reason {
                rule: None,
                effect: Effect::from(self.default),
                code: ReasonCode::DefaultEffect,
                message: format!(
                    "no rule decides `{}`, so the policy default ({}) applies",
                    vars.action.kind,
                    self.default.as_str()
                ),
            });
        }
        let confidence = vars.action.confidence.map(|c| {
            let sum: f64 = matched.iter().map(|r| r.confidence_adjustment).sum();
            ConfidenceChange {
                initial: c.get(),
                adjusted: crate::action::Confidence::clamped(c.get() + sum).get(),
            }
        });
        let mut obligations = Obligations::default();
        if verdict != Verdict::Deny {
            for rule in matched.iter().filter(|r| r.effect == Effect::Modify) {
                if obligations.mode.is_none() {
                    obligations.mode.clone_from(&rule.set.mode);
                }
                for (name, value) in &rule.set.limits {
                    let slot = obligations.limits.entry(name.clone()).or_insert(*value);
                    *slot = slot.min(*value);
                }
            }
        }
        let approval = (verdict == Verdict::RequireApproval).then(|| {
            let mut merged: Option<ApprovalRequirement> = None;
            for rule in matched.iter().filter(|r| r.effect == Effect::RequireApproval) {
                let this = rule.approval.clone().unwrap_or_default();
                merged = Some(match merged {
                    None => this,
                    Some(mut m) => {
                        for group in this.approvers {
                            if !m.approvers.contains(&group) {
                                m.approvers.push(group);
                            }
                        }
                        m.quorum = m.quorum.max(this.quorum);
                        m.expires_in = m.expires_in.min(this.expires_in);
                        m
                    }
                });
            }
            merged.unwrap_or_default()
        });
        Decision {
            verdict,
            reasons,
            confidence,
            obligations,
            approval,
            policy_version: self.version.as_str().to_owned(),
            failure: None,
        }
    }

    fn failed(&self, rule: &Rule, detail: String, action: &Action) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            reasons: vec![Reason {
                rule: Some(rule.id.clone()),
                effect: Effect::Deny,
                code: ReasonCode::EvaluationError,
                message: format!(
                    "rule `{}` could not be evaluated for this action, so the decision fails closed",
                    rule.id
                ),
            }],
            confidence: action.confidence.map(|c| ConfidenceChange {
                initial: c.get(),
                adjusted: c.get(),
            }),
            obligations: Obligations::default(),
            approval: None,
            policy_version: self.version.as_str().to_owned(),
            failure: Some(EvaluationFailure {
                rule: rule.id.clone(),
                detail,
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Agents → tiers

#[derive(Debug, Clone, Default)]
struct AgentMap {
    exact: HashMap<String, Tier>,
    /// Patterns, most specific first.
    patterns: Vec<(Glob, Tier)>,
}

impl AgentMap {
    fn tier_of(&self, agent: &str) -> Option<Tier> {
        if let Some(t) = self.exact.get(agent) {
            return Some(*t);
        }
        self.patterns.iter().find(|(g, _)| g.matches(agent)).map(|(_, t)| *t)
    }
}

// ---------------------------------------------------------------------------------------------
// The action-name index

#[derive(Debug, Clone, Default)]
struct Index {
    /// Full candidate lists for every action name a rule spells literally.
    exact: HashMap<String, Box<[u32]>>,
    trie: Trie,
    general: Vec<(Glob, u32)>,
}

impl Index {
    fn build(rules: &[Rule]) -> Self {
        let mut literal: HashMap<String, Vec<u32>> = HashMap::new();
        let mut index = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            for glob in &rule.actions {
                match glob.kind() {
                    GlobKind::Exact => literal.entry(glob.as_str().to_owned()).or_default().push(i),
                    GlobKind::Prefix(prefix) => index.trie.insert(prefix, i),
                    GlobKind::General(_) => index.general.push((glob.clone(), i)),
                }
            }
        }
        for (name, mut ids) in literal {
            ids.extend(index.patterned(&name));
            ids.sort_unstable();
            ids.dedup();
            index.exact.insert(name, ids.into_boxed_slice());
        }
        index
    }

    fn patterned(&self, name: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.trie.collect(name, &mut ids);
        ids.extend(self.general.iter().filter(|(g, _)| g.matches(name)).map(|(_, i)| *i));
        ids
    }

    /// Indices of the rules whose action patterns match `name`, in policy order.
    fn candidates(&self, name: &str) -> Cow<'_, [u32]> {
        if let Some(ids) = self.exact.get(name) {
            return Cow::Borrowed(ids);
        }
        let mut ids = self.patterned(name);
        ids.sort_unstable();
        ids.dedup();
        Cow::Owned(ids)
    }
}

/// A byte trie of prefix patterns; walking a name visits every prefix that matches it.
#[derive(Debug, Clone)]
struct Trie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    rules: Vec<u32>,
}

impl Default for Trie {
    fn default() -> Self {
        Self {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl Trie {
    fn insert(&mut self, prefix: &str, rule: u32) {
        let mut at = 0usize;
        for b in prefix.bytes() {
            at = match self.nodes[at].children.iter().find(|(c, _)| *c == b) {
                Some((_, next)) => *next as usize,
                None => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.push((b, next as u32));
                    next
                }
            };
        }
        self.nodes[at].rules.push(rule);
    }

    fn collect(&self, name: &str, out: &mut Vec<u32>) {
        let mut at = 0usize;
        out.extend_from_slice(&self.nodes[at].rules);
        for b in name.bytes() {
            match self.nodes[at].children.iter().find(|(c, _)| *c == b) {
                Some((_, next)) => {
                    at = *next as usize;
                    out.extend_from_slice(&self.nodes[at].rules);
                }
                None => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compilation and validation

const READ_ONLY: &str = "!(action.type.endsWith('.read') || action.type.endsWith('.get') \
                         || action.type.endsWith('.list') || action.type.endsWith('.search'))";

struct Checker {
    errors: Vec<PolicyError>,
}

impl Checker {
    fn err(&mut self, span: &Span, message: impl Into<String>) {
        self.errors.push(PolicyError::at(span, message));
    }

    fn duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
        match humantime::parse_duration(s.as_str()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.err(s.span(), format!("{what} must be longer than zero"));
                None
            }
            Err(_) => {
                self.err(s.span(), format!("{what} `{}` is not a duration like `30m`, `4h` or `7d`", s.as_str()));
                None
            }
        }
    }

    fn action_pattern(&mut self, s: &Spanned<String>) -> Option<Glob> {
        let text = s.as_str();
        let literal_ok = text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'));
        let segments_ok = !text.is_empty()
            && !text.contains("..")
            && !(text.starts_with('.') || (text.ends_with('.')));
        if !literal_ok || !segments_ok {
            self.err(
                s.span(),
                format!(
                    "action pattern `{text}` can never match: action types are dotted names of \
                     letters, digits, `_` and `-`"
                ),
            );
            return None;
        }
        Some(Glob::new(text))
    }

    fn action_patterns(&mut self, list: &Spanned<Vec<Spanned<String>>>) -> Vec<Glob> {
        if list.is_empty() {
            self.err(list.span(), "`actions` must list at least one action or pattern");
        }
        list.iter().filter_map(|s| self.action_pattern(s)).collect()
    }

    fn tier(&mut self, s: &Spanned<String>) -> Option<Tier> {
        let tier = Tier::parse(s.as_str());
        if tier.is_none() {
            self.err(
                s.span(),
                format!(
                    "unknown tier `{}`; expected observe, recommend, draft, sandbox or prod_gated",
                    s.as_str()
                ),
            );
        }
        tier
    }

    fn expr(&mut self, s: &Spanned<String>, what: &str) -> Option<Expr> {
        match Expr::compile(s.as_str()) {
            Ok(e) => Some(e),
            Err(e) => {
                let at = e.position.map(|(l, c)| format!(" (line {l}, column {c} of the condition)")).unwrap_or_default();
                self.err(s.span(), format!("invalid {what}: {}{at}", e.message));
                None
            }
        }
    }

    fn limits(&mut self, map: &Entries<Spanned<String>>) -> Limits {
        let mut limits = Limits::default();
        for (name, value) in map.iter() {
            let count = |c: &mut Self| match value.as_str().parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    c.err(value.span(), format!("limit `{}` must be a whole number above zero", name.as_str()));
                    None
                }
            };
            match name.as_str() {
                "tool_calls" => limits.tool_calls = count(self),
                "tokens" => limits.tokens = count(self),
                "cost_usd" => match value.as_str().parse::<f64>() {
                    Ok(x) if x.is_finite() && x > 0.0 => limits.cost_usd = Some(x),
                    _ => self.err(value.span(), "limit `cost_usd` must be an amount above zero"),
                },
                "duration" => limits.duration = self.duration(value, "limit `duration`"),
                other => self.err(
                    name.span(),
                    format!("unknown limit `{other}`; expected tool_calls, tokens, cost_usd or duration"),
                ),
            }
        }
        limits
    }

    fn per(&mut self, s: &Spanned<String>) -> Option<Per> {
        Some(match s.as_str() {
            "run" => Per::Run,
            "agent" => Per::Agent,
            "tenant" => Per::Tenant,
            other => {
                self.err(s.span(), format!("unknown `per` value `{other}`; expected run, agent or tenant"));
                return None;
            }
        })
    }

    fn rule(&mut self, raw: &RawRule, preset: Option<Tier>) -> Option<Rule> {
        let before = self.errors.len();
        let id = RuleId::new(raw.id.as_str()).map_err(|m| self.err(raw.id.span(), m)).ok();
        let effect = Effect::parse(raw.effect.as_str());
        if effect.is_none() {
            self.err(
                raw.effect.span(),
                format!(
                    "unknown effect `{}`; expected allow, deny, require_approval or modify",
                    raw.effect.as_str()
                ),
            );
        }
        let actions = match &raw.actions {
            Some(list) => self.action_patterns(list),
            None => {
                self.err(raw.id.span(), format!("rule `{}` needs `actions` (use [\"*\"] for every action)", raw.id.as_str()));
                Vec::new()
            }
        };
        let agents: Vec<Glob> = raw
            .agents
            .iter()
            .flatten()
            .filter_map(|s| {
                if s.is_empty() {
                    self.err(s.span(), "agent pattern must not be empty");
                    None
                } else {
                    Some(Glob::new(s.as_str()))
                }
            })
            .collect();
        let mut tiers: Vec<Tier> = raw.tiers.iter().flatten().filter_map(|s| self.tier(s)).collect();
        if let Some(t) = preset {
            if let Some(list) = raw.tiers.as_ref().and_then(|l| l.first()) {
                self.err(list.span(), "rules under `tiers:` apply to their tier already; remove `tiers`");
            }
            tiers = vec![t];
        }
        let when = raw
            .when
            .as_ref()
            .and_then(|s| self.expr(s, "condition").map(|e| (s.as_str().to_owned(), e)));
        let reason = raw.reason.as_ref().and_then(|s| match Template::compile(s.as_str()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(s.span(), format!("invalid reason template: {}", e.message));
                None
            }
        });
        let confidence_adjustment = match &raw.confidence_adjustment {
            Some(a) if !(a.is_finite() && (-1.0..=1.0).contains(&**a)) => {
                self.err(a.span(), format!("confidence_adjustment {} is outside [-1, 1]", **a));
                0.0
            }
            Some(a) => **a,
            None => 0.0,
        };
        let approval = match (&raw.approval, effect) {
            (Some(a), Some(e)) if e != Effect::RequireApproval => {
                self.err(a.span(), format!("`approval` is only allowed on require_approval rules, not {}", e.as_str()));
                None
            }
            (Some(a), _) => {
                let quorum = a.quorum.as_ref().map_or(1, |q| **q);
                if quorum == 0 {
                    if let Some(q) = &a.quorum {
                        self.err(q.span(), "quorum must be at least 1");
                    }
                }
                let expires_in = match &a.expires_in {
                    Some(d) => self.duration(d, "expires_in").unwrap_or_default(),
                    None => ApprovalRequirement::default().expires_in,
                };
                Some(ApprovalRequirement {
                    approvers: a.approvers.clone(),
                    quorum,
                    expires_in,
                })
            }
            (None, _) => None,
        };
        let set = match (&raw.set, effect) {
            (Some(s), Some(e)) if e != Effect::Modify => {
                self.err(s.span(), format!("`set` is only allowed on modify rules, not {}", e.as_str()));
                Obligations::default()
            }
            (Some(s), _) => {
                let limits = self.limits(&s.limits);
                let mut map = BTreeMap::new();
                limits.tool_calls.map(|n| map.insert("tool_calls".to_owned(), n as f64));
                limits.tokens.map(|n| map.insert("tokens".to_owned(), n as f64));
                limits.cost_usd.map(|n| map.insert("cost_usd".to_owned(), n));
                limits.duration.map(|d| map.insert("duration".to_owned(), d.as_secs_f64()));
                if s.mode.is_none() && map.is_empty() {
                    self.err(s.span(), "`set` must set `mode` or `limits`");
                }
                Obligations {
                    mode: s.mode.clone(),
                    limits: map,
                }
            }
            (None, Some(Effect::Modify)) => {
                self.err(raw.effect.span(), "a modify rule needs `set` (mode or limits)");
                Obligations::default()
            }
            (None, _) => Obligations::default(),
        };
        if self.errors.len() > before {
            return None;
        }
        Some(Rule {
            id: id?,
            description: raw.description.clone(),
            actions,
            agents,
            tiers,
            scope: raw
                .scope
                .as_ref()
                .map(|s| Scope {
                    app: s.app.clone(),
                    workflow: s.workflow.clone(),
                })
                .unwrap_or_default(),
            when,
            effect: effect?,
            reason,
            reason_source: raw.reason.as_ref().map(|s| s.as_str().to_owned()),
            confidence_adjustment,
            approval,
            set,
            protected: raw.protected.unwrap_or(false),
            preset,
        })
    }

    /// The built-in rules for a tier. Tiers cap what an agent may do; they never grant.
    fn preset(&mut self, tier: Tier, production: &[Glob]) -> Vec<Rule> {
        let base = |id: &str, actions: Vec<Glob>, when: Option<&str>, effect: Effect, reason: &str| -> Option<Rule> {
            Some(Rule {
                id: RuleId::new(id).ok()?,
                description: Some(format!("built-in preset for tier `{}`", tier.as_str())),
                actions,
                agents: Vec::new(),
                tiers: vec![tier],
                scope: Scope::default(),
                when: match when {
                    Some(src) => Some((src.to_owned(), Expr::compile(src).ok()?)),
                    None => None,
                },
                effect,
                reason: Some(Template::compile(reason).ok()?),
                reason_source: Some(reason.to_owned()),
                confidence_adjustment: 0.0,
                approval: (effect == Effect::RequireApproval).then(ApprovalRequirement::default),
                set: Obligations::default(),
                protected: false,
                preset: Some(tier),
            })
        };
        let everything = vec![Glob::new("*")];
        let rules = match tier {
            Tier::Observe => vec![base(
                "tier-observe",
                everything,
                Some(READ_ONLY),
                Effect::Deny,
                "agent {{agent.id}} is at tier observe and may only run read actions (*.read, *.get, *.list, *.search)",
            )],
            Tier::Recommend => vec![base(
                "tier-recommend",
                everything,
                Some(READ_ONLY),
                Effect::Deny,
                "agent {{agent.id}} is at tier recommend: it may read and recommend, not execute",
            )],
            Tier::Draft => vec![base(
                "tier-draft",
                everything,
                Some(READ_ONLY),
                Effect::Modify,
                "agent {{agent.id}} is at tier draft, so this write must run in mode draft",
            )
            .map(|mut rule| {
                rule.set.mode = Some("draft".to_owned());
                rule
            })],
            Tier::Sandbox if !production.is_empty() => vec![base(
                "tier-sandbox",
                production.to_vec(),
                None,
                Effect::Deny,
                "agent {{agent.id}} is at tier sandbox and may not run production actions",
            )],
            Tier::ProdGated if !production.is_empty() => vec![base(
                "tier-prod-gated",
                production.to_vec(),
                None,
                Effect::RequireApproval,
                "agent {{agent.id}} is at tier prod_gated: production actions need approval",
            )],
            Tier::Sandbox | Tier::ProdGated => Vec::new(),
        };
        let built: Vec<Rule> = rules.into_iter().flatten().collect();
        if built.is_empty() && matches!(tier, Tier::Observe | Tier::Recommend | Tier::Draft) {
            self.errors.push(PolicyError::nowhere(format!("internal: preset for tier {} did not compile", tier.as_str())));
        }
        built
    }
}

fn compile(raw: RawPolicy) -> Result<Policy, PolicyErrors> {
    let mut c = Checker { errors: Vec::new() };

    let version = Version::parse(raw.version.as_str());
    if version.is_none() {
        c.err(
            raw.version.span(),
            format!("version `{}` is not a semantic version like 1.0.0", raw.version.as_str()),
        );
    }
    let default = match raw.default.as_ref().map(|d| d.as_str()) {
        None | Some("deny") => Verdict::Deny,
        Some("allow") => Verdict::Allow,
        Some(other) => {
            if let Some(d) = &raw.default {
                c.err(d.span(), format!("unknown default `{other}`; expected allow or deny"));
            }
            Verdict::Deny
        }
    };
    if let Some(on_error) = &raw.on_error
        && on_error.as_str() != "deny"
    {
        c.err(
            on_error.span(),
            format!("on_error `{}` is not allowed: an evaluation error always denies", on_error.as_str()),
        );
    }

    let mut agents = AgentMap::default();
    for (pattern, entry) in raw.agents.iter() {
        if pattern.is_empty() {
            c.err(pattern.span(), "agent pattern must not be empty");
            continue;
        }
        let Some(tier) = c.tier(&entry.tier) else { continue };
        let glob = Glob::new(pattern.as_str());
        if glob.is_exact() {
            agents.exact.insert(pattern.as_str().to_owned(), tier);
        } else {
            agents.patterns.push((glob, tier));
        }
    }
    // Most specific first; ties in name order, which the map already gives.
    agents.patterns.sort_by_key(|(g, _)| std::cmp::Reverse(g.specificity()));

    let production: Vec<Glob> = raw.production.iter().filter_map(|s| c.action_pattern(s)).collect();

    let mut rules: Vec<Rule> = raw.rules.iter().filter_map(|r| c.rule(r, None)).collect();
    let mut ids: HashMap<String, ()> = HashMap::new();
    let mut all_raw: Vec<&RawRule> = raw.rules.iter().collect();
    let mut overridden = Vec::new();
    for (name, section) in raw.tiers.iter() {
        let Some(tier) = c.tier(name) else { continue };
        overridden.push(tier);
        rules.extend(section.rules.iter().filter_map(|r| c.rule(r, Some(tier))));
        all_raw.extend(section.rules.iter());
    }
    for raw_rule in &all_raw {
        let id = raw_rule.id.as_str();
        if id.starts_with("tier-") {
            c.err(raw_rule.id.span(), format!("rule id `{id}`: ids starting with `tier-` are reserved for tier presets"));
        }
        if ids.insert(id.to_owned(), ()).is_some() {
            c.err(raw_rule.id.span(), format!("duplicate rule id `{id}`"));
        }
    }
    for tier in Tier::ALL {
        if !overridden.contains(&tier) {
            let preset = c.preset(tier, &production);
            rules.extend(preset);
        }
    }

    let mut budgets = Vec::new();
    let mut budget_ids = HashMap::new();
    for b in &raw.budgets {
        if budget_ids.insert(b.id.as_str().to_owned(), ()).is_some() {
            c.err(b.id.span(), format!("duplicate budget id `{}`", b.id.as_str()));
        }
        let per = c.per(&b.per);
        if b.limits.is_empty() {
            c.err(b.limits.span(), "a budget needs at least one limit");
        }
        let limits = c.limits(&b.limits);
        if let Some(per) = per {
            budgets.push(Budget {
                id: b.id.as_str().to_owned(),
                per,
                limits,
            });
        }
    }

    let mut rate_limits = Vec::new();
    let mut limit_ids = HashMap::new();
    for r in &raw.rate_limits {
        if limit_ids.insert(r.id.as_str().to_owned(), ()).is_some() {
            c.err(r.id.span(), format!("duplicate rate limit id `{}`", r.id.as_str()));
        }
        let actions = c.action_patterns(&r.actions);
        let per = c.per(&r.per);
        if *r.limit == 0 {
            c.err(r.limit.span(), "limit must be at least 1");
        }
        let window = c.duration(&r.window, "window");
        if let (Some(per), Some(window)) = (per, window) {
            rate_limits.push(RateLimit {
                id: r.id.as_str().to_owned(),
                actions,
                per,
                limit: *r.limit,
                window,
            });
        }
    }

    let mut audit = AuditSpec::default();
    if let Some(a) = &raw.audit {
        for (list, out) in [(&a.keep, &mut audit.keep), (&a.redact, &mut audit.redact)] {
            for path in list {
                let ok = (path.starts_with("action.") || path.starts_with("context."))
                    && path.split('.').all(|s| !s.is_empty());
                if ok {
                    out.push(path.as_str().to_owned());
                } else {
                    c.err(
                        path.span(),
                        format!("audit path `{}` must be a dotted path under `action.` or `context.`", path.as_str()),
                    );
                }
            }
        }
    }

    let proposals = match raw.proposals.as_ref().map(|p| p.as_str()) {
        None | Some("on" | "true") => true,
        Some("off" | "false") => false,
        Some(other) => {
            if let Some(p) = &raw.proposals {
                c.err(p.span(), format!("proposals must be `on` or `off`, not `{other}`"));
            }
            true
        }
    };

    let guidance = raw
        .guidance
        .iter()
        .map(|g| Guidance {
            name: g.name.clone(),
            content: g.content.clone(),
        })
        .collect();

    if !c.errors.is_empty() {
        c.errors.sort_by_key(|e| (e.line, e.column));
        return Err(PolicyErrors(c.errors));
    }
    let Some(version) = version else {
        return Err(PolicyErrors(vec![PolicyError::nowhere("invalid version")]));
    };
    let index = Index::build(&rules);
    Ok(Policy {
        version,
        default,
        agents,
        production,
        rules,
        index,
        budgets,
        rate_limits,
        audit,
        proposals,
        guidance,
    })
}
