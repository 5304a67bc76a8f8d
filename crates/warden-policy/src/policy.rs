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
        if !self.agents.is_empty()
            && !agent.is_some_and(|a| self.agents.iter().any(|g| g.matches(a)))
        {
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
            for rule in matched
                .iter()
                .filter(|r| r.effect == Effect::RequireApproval)
            {
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
        self.patterns
            .iter()
            .find(|(g, _)| g.matches(agent))
            .map(|(_, t)| *t)
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
        ids.extend(
            self.general
                .iter()
                .filter(|(g, _)| g.matches(name))
                .map(|(_, i)| *i),
        );
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
                self.err(
                    s.span(),
                    format!(
                        "{what} `{}` is not a duration like `30m`, `4h` or `7d`",
                        s.as_str()
                    ),
                );
                None
            }
        }
    }

    fn action_pattern(&mut self, s: &Spanned<String>) -> Option<Glob> {
        let text = s.as_str();
        let literal_ok = text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'));
        let segments_ok = !(text.is_empty()
            || text.contains("..")
            || text.starts_with('.')
            || text.ends_with('.'));
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
            self.err(
                list.span(),
                "`actions` must list at least one action or pattern",
            );
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
                let at = e
                    .position
                    .map(|(l, c)| format!(" (line {l}, column {c} of the condition)"))
                    .unwrap_or_default();
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
                    c.err(
                        value.span(),
                        format!(
                            "limit `{}` must be a whole number above zero",
                            name.as_str()
                        ),
                    );
                    None
                }
            };
            match name.as_str() {
                "tool_calls" => limits.tool_calls = count(self),
                "tokens" => limits.tokens = count(self),
                "cost_usd" => match value.as_str().parse::<f64>() {
                    Ok(x) if x.is_finite() && x > 0.0 => limits.cost_usd = Some(x),
                    _ => self.err(
                        value.span(),
                        "limit `cost_usd` must be an amount above zero",
                    ),
                },
                "duration" => limits.duration = self.duration(value, "limit `duration`"),
                other => self.err(
                    name.span(),
                    format!(
                        "unknown limit `{other}`; expected tool_calls, tokens, cost_usd or duration"
                    ),
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
                self.err(
                    s.span(),
                    format!("unknown `per` value `{other}`; expected run, agent or tenant"),
                );
                return None;
            }
        })
    }

    fn rule(&mut self, raw: &RawRule, preset: Option<Tier>) -> Option<Rule> {
        let before = self.errors.len();
        let id = RuleId::new(raw.id.as_str())
            .map_err(|m| self.err(raw.id.span(), m))
            .ok();
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
                self.err(
                    raw.id.span(),
                    format!(
                        "rule `{}` needs `actions` (use [\"*\"] for every action)",
                        raw.id.as_str()
                    ),
                );
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
        let mut tiers: Vec<Tier> = raw
            .tiers
            .iter()
            .flatten()
            .filter_map(|s| self.tier(s))
            .collect();
        if let Some(t) = preset {
            if let Some(list) = raw.tiers.as_ref().and_then(|l| l.first()) {
                self.err(
                    list.span(),
                    "rules under `tiers:` apply to their tier already; remove `tiers`",
                );
            }
            tiers = vec![t];
        }
        let when = raw.when.as_ref().and_then(|s| {
            self.expr(s, "condition")
                .map(|e| (s.as_str().to_owned(), e))
        });
        let reason = raw
            .reason
            .as_ref()
            .and_then(|s| match Template::compile(s.as_str()) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.err(s.span(), format!("invalid reason template: {}", e.message));
                    None
                }
            });
        let confidence_adjustment = match &raw.confidence_adjustment {
            Some(a) if !(a.is_finite() && (-1.0..=1.0).contains(&**a)) => {
                self.err(
                    a.span(),
                    format!("confidence_adjustment {} is outside [-1, 1]", **a),
                );
                0.0
            }
            Some(a) => **a,
            None => 0.0,
        };
        let approval = match (&raw.approval, effect) {
            (Some(a), Some(e)) if e != Effect::RequireApproval => {
                self.err(
                    a.span(),
                    format!(
                        "`approval` is only allowed on require_approval rules, not {}",
                        e.as_str()
                    ),
                );
                None
            }
            (Some(a), _) => {
                let quorum = a.quorum.as_ref().map_or(1, |q| **q);
                if quorum == 0
                    && let Some(q) = &a.quorum
                {
                    self.err(q.span(), "quorum must be at least 1");
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
                self.err(
                    s.span(),
                    format!("`set` is only allowed on modify rules, not {}", e.as_str()),
                );
                Obligations::default()
            }
            (Some(s), _) => {
                let limits = self.limits(&s.limits);
                let mut map = BTreeMap::new();
                limits
                    .tool_calls
                    .map(|n| map.insert("tool_calls".to_owned(), n as f64));
                limits
                    .tokens
                    .map(|n| map.insert("tokens".to_owned(), n as f64));
                limits
                    .cost_usd
                    .map(|n| map.insert("cost_usd".to_owned(), n));
                limits
                    .duration
                    .map(|d| map.insert("duration".to_owned(), d.as_secs_f64()));
                if s.mode.is_none() && map.is_empty() {
                    self.err(s.span(), "`set` must set `mode` or `limits`");
                }
                Obligations {
                    mode: s.mode.clone(),
                    limits: map,
                }
            }
            (None, Some(Effect::Modify)) => {
                self.err(
                    raw.effect.span(),
                    "a modify rule needs `set` (mode or limits)",
                );
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
        let base = |id: &str,
                    actions: Vec<Glob>,
                    when: Option<&str>,
                    effect: Effect,
                    reason: &str|
         -> Option<Rule> {
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
            Tier::Draft => vec![
                base(
                    "tier-draft",
                    everything,
                    Some(READ_ONLY),
                    Effect::Modify,
                    "agent {{agent.id}} is at tier draft, so this write must run in mode draft",
                )
                .map(|mut rule| {
                    rule.set.mode = Some("draft".to_owned());
                    rule
                }),
            ],
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
            self.errors.push(PolicyError::nowhere(format!(
                "internal: preset for tier {} did not compile",
                tier.as_str()
            )));
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
            format!(
                "version `{}` is not a semantic version like 1.0.0",
                raw.version.as_str()
            ),
        );
    }
    let default = match raw.default.as_ref().map(|d| d.as_str()) {
        None | Some("deny") => Verdict::Deny,
        Some("allow") => Verdict::Allow,
        Some(other) => {
            if let Some(d) = &raw.default {
                c.err(
                    d.span(),
                    format!("unknown default `{other}`; expected allow or deny"),
                );
            }
            Verdict::Deny
        }
    };
    if let Some(on_error) = &raw.on_error
        && on_error.as_str() != "deny"
    {
        c.err(
            on_error.span(),
            format!(
                "on_error `{}` is not allowed: an evaluation error always denies",
                on_error.as_str()
            ),
        );
    }

    let mut agents = AgentMap::default();
    for (pattern, entry) in raw.agents.iter() {
        if pattern.is_empty() {
            c.err(pattern.span(), "agent pattern must not be empty");
            continue;
        }
        let Some(tier) = c.tier(&entry.tier) else {
            continue;
        };
        let glob = Glob::new(pattern.as_str());
        if glob.is_exact() {
            agents.exact.insert(pattern.as_str().to_owned(), tier);
        } else {
            agents.patterns.push((glob, tier));
        }
    }
    // Most specific first; ties in name order, which the map already gives.
    agents
        .patterns
        .sort_by_key(|(g, _)| std::cmp::Reverse(g.specificity()));

    let production: Vec<Glob> = raw
        .production
        .iter()
        .filter_map(|s| c.action_pattern(s))
        .collect();

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
            c.err(
                raw_rule.id.span(),
                format!("rule id `{id}`: ids starting with `tier-` are reserved for tier presets"),
            );
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
            c.err(
                b.id.span(),
                format!("duplicate budget id `{}`", b.id.as_str()),
            );
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
            c.err(
                r.id.span(),
                format!("duplicate rate limit id `{}`", r.id.as_str()),
            );
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
                        format!(
                            "audit path `{}` must be a dotted path under `action.` or `context.`",
                            path.as_str()
                        ),
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
                c.err(
                    p.span(),
                    format!("proposals must be `on` or `off`, not `{other}`"),
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a decision looked like, in the terms a policy author thinks in.
    #[derive(Debug, PartialEq)]
    struct Seen {
        verdict: &'static str,
        deciding: Vec<String>,
        reasons: Vec<String>,
    }

    fn seen(d: &Decision) -> Seen {
        Seen {
            verdict: d.verdict.as_str(),
            deciding: d.deciding_rules().map(|r| r.as_str().to_owned()).collect(),
            reasons: d
                .reasons
                .iter()
                .map(|r| r.rule.as_ref().map_or("-", |r| r.as_str()).to_owned())
                .collect(),
        }
    }

    fn decide(policy: &str, action: serde_json::Value) -> Decision {
        let policy =
            Policy::parse(policy).unwrap_or_else(|e| panic!("policy does not parse:\n{e}"));
        let action = Action::from_value(action).unwrap();
        policy.evaluate(
            &action,
            &Env {
                tenant: "acme".into(),
                now: 1_700_000_000,
            },
        )
    }

    /// Runs a table of (action, verdict, deciding rules, every reason's rule in order).
    fn check(policy: &str, table: &[(serde_json::Value, &'static str, &[&str], &[&str])]) {
        for (action, verdict, deciding, reasons) in table {
            let d = decide(policy, action.clone());
            let expected = Seen {
                verdict,
                deciding: deciding.iter().map(|s| s.to_string()).collect(),
                reasons: reasons.iter().map(|s| s.to_string()).collect(),
            };
            assert_eq!(seen(&d), expected, "action {action}");
        }
    }

    const COMBINING: &str = r#"
version: 1.0.0
default: deny
rules:
  - {id: allow-all, actions: ["*"], effect: allow}
  - {id: hold-big, actions: [pay.send], when: action.payload.amount > 100, effect: require_approval, approval: {approvers: [finance]}}
  - {id: block-huge, actions: [pay.send], when: action.payload.amount > 1000, effect: deny}
  - {id: draft-it, actions: ["pay.*"], effect: modify, set: {mode: draft, limits: {tokens: 50}}}
  - {id: cap-it, actions: ["pay.*"], effect: modify, set: {mode: sandbox, limits: {tokens: 10, tool_calls: 3}}}
"#;

    #[test]
    fn deny_beats_approval_beats_allow_and_reasons_come_strongest_first() {
        check(
            COMBINING,
            &[
                (
                    json!({"type": "pay.send", "payload": {"amount": 5}}),
                    "allow",
                    &["allow-all"],
                    &["allow-all", "draft-it", "cap-it"],
                ),
                (
                    json!({"type": "pay.send", "payload": {"amount": 500}}),
                    "require_approval",
                    &["hold-big"],
                    &["hold-big", "allow-all", "draft-it", "cap-it"],
                ),
                (
                    json!({"type": "pay.send", "payload": {"amount": 5000}}),
                    "deny",
                    &["block-huge"],
                    &["block-huge", "hold-big", "allow-all", "draft-it", "cap-it"],
                ),
                (
                    json!({"type": "other.thing"}),
                    "allow",
                    &["allow-all"],
                    &["allow-all"],
                ),
            ],
        );
    }

    #[test]
    fn modify_adds_obligations_to_allow_and_approval_but_never_to_deny() {
        let allow = decide(
            COMBINING,
            json!({"type": "pay.send", "payload": {"amount": 5}}),
        );
        assert_eq!(
            allow.obligations.mode.as_deref(),
            Some("draft"),
            "the first rule to set mode wins"
        );
        assert_eq!(
            allow.obligations.limits.get("tokens"),
            Some(&10.0),
            "the lowest limit wins"
        );
        assert_eq!(allow.obligations.limits.get("tool_calls"), Some(&3.0));
        let held = decide(
            COMBINING,
            json!({"type": "pay.send", "payload": {"amount": 500}}),
        );
        assert_eq!(held.obligations.mode.as_deref(), Some("draft"));
        assert_eq!(
            held.approval.as_ref().unwrap().approvers,
            vec!["finance".to_string()]
        );
        let denied = decide(
            COMBINING,
            json!({"type": "pay.send", "payload": {"amount": 5000}}),
        );
        assert!(denied.obligations.is_empty());
        assert!(denied.approval.is_none());
    }

    #[test]
    fn the_default_applies_when_no_rule_decides() {
        let only_modify = "version: 1.0.0\ndefault: allow\nrules:\n  - {id: m, actions: [a], effect: modify, set: {mode: draft}}\n";
        let d = decide(only_modify, json!({"type": "a"}));
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(
            d.obligations.mode.as_deref(),
            Some("draft"),
            "modify still applies to a default allow"
        );
        assert_eq!(d.reasons.last().unwrap().code, ReasonCode::DefaultEffect);
        let d = decide("version: 1.0.0\n", json!({"type": "a"}));
        assert_eq!(d.verdict, Verdict::Deny, "an omitted default is deny");
        assert_eq!(
            d.reasons[0].message,
            "no rule decides `a`, so the policy default (deny) applies"
        );
    }

    #[test]
    fn confidence_adjustments_sum_and_clamp() {
        let policy = r#"
version: 1.0.0
rules:
  - {id: a, actions: [x], effect: allow, confidence_adjustment: 0.3}
  - {id: b, actions: [x], effect: modify, set: {mode: draft}, confidence_adjustment: 0.25}
  - {id: c, actions: [y], effect: deny, confidence_adjustment: -0.5}
"#;
        let table = [
            ("x", 0.5, 1.0),
            ("x", 0.2, 0.75),
            ("y", 0.3, 0.0),
            ("y", 0.9, 0.4),
        ];
        for (kind, initial, adjusted) in table {
            let d = decide(policy, json!({"type": kind, "confidence": initial}));
            let c = d.confidence.unwrap();
            assert_eq!(c.initial, initial);
            assert!(
                (c.adjusted - adjusted).abs() < 1e-12,
                "{kind} {initial}: {}",
                c.adjusted
            );
        }
        assert!(decide(policy, json!({"type": "x"})).confidence.is_none());
    }

    #[test]
    fn an_evaluation_error_denies_with_a_safe_message_and_an_internal_detail() {
        let policy = r#"
version: 1.0.0
default: allow
rules:
  - {id: allow-all, actions: ["*"], effect: allow}
  - {id: secret-check, actions: [x], when: context.user.email.endsWith('@corp.com'), effect: deny}
"#;
        let d = decide(policy, json!({"type": "x", "context": {"user": {}}}));
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.reasons.len(), 1);
        assert_eq!(d.reasons[0].code, ReasonCode::EvaluationError);
        assert!(
            !d.reasons[0].message.contains("email"),
            "{}",
            d.reasons[0].message
        );
        let failure = d.failure.unwrap();
        assert_eq!(failure.rule.as_str(), "secret-check");
        assert!(failure.detail.contains("email"), "{}", failure.detail);
        // A condition that exceeds its cost limit fails closed the same way.
        let costly = "version: 1.0.0\ndefault: allow\nrules:\n  - id: slow\n    actions: [x]\n    effect: deny\n    when: \"[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, a < 0))))\"\n";
        let cheap = decide(costly, json!({"type": "x"}));
        assert_eq!(
            (cheap.verdict, cheap.reasons[0].code),
            (Verdict::Allow, ReasonCode::DefaultEffect),
            "all() stops at the first false"
        );
        let costly = costly.replace("a < 0", "a > 0");
        let d = decide(&costly, json!({"type": "x"}));
        assert_eq!(
            (d.verdict, d.reasons[0].code),
            (Verdict::Deny, ReasonCode::EvaluationError)
        );
        assert!(d.failure.unwrap().detail.contains("cost limit"));
    }

    /// Regression: `int()` and `double()` of a non-numeric string put the string itself in
    /// the failure detail, which the server logs — a card number in a payload reached the log.
    #[test]
    fn failure_details_never_carry_input_values() {
        let secret = "4111 1111 1111 1111";
        for when in [
            "int(action.payload.card) > 0",
            "double(action.payload.card) > 0.0",
            "action.payload.card > 5",
            "action.payload.card.nope == 1",
        ] {
            let policy = format!(
                "version: 1.0.0\ndefault: allow\nrules:\n  - {{id: r, actions: [x], effect: deny, when: '{when}'}}\n"
            );
            let d = decide(&policy, json!({"type": "x", "payload": {"card": secret}}));
            assert_eq!(d.reasons[0].code, ReasonCode::EvaluationError, "{when}");
            let detail = d.failure.unwrap().detail;
            assert!(!detail.contains("4111"), "{when}: {detail}");
        }
    }

    const TIERS: &str = r#"
version: 1.0.0
default: deny
production: ["deploy.*"]
agents:
  "bot-*": {tier: sandbox}
  "bot-ro-*": {tier: observe}
  bot-ro-special: {tier: prod_gated}
  "rec-*": {tier: recommend}
  "drafter-*": {tier: draft}
rules:
  - {id: grant, actions: ["*"], effect: allow}
"#;

    #[test]
    fn tiers_cap_what_agents_may_do_and_the_most_specific_pattern_wins() {
        check(
            TIERS,
            &[
                (
                    json!({"type": "ticket.get", "agent": "bot-ro-1"}),
                    "allow",
                    &["grant"],
                    &["grant"],
                ),
                (
                    json!({"type": "user.profile.search", "agent": "bot-ro-1"}),
                    "allow",
                    &["grant"],
                    &["grant"],
                ),
                (
                    json!({"type": "ticket.resolve", "agent": "bot-ro-1"}),
                    "deny",
                    &["tier-observe"],
                    &["tier-observe", "grant"],
                ),
                (
                    json!({"type": "ticket.resolve", "agent": "rec-1"}),
                    "deny",
                    &["tier-recommend"],
                    &["tier-recommend", "grant"],
                ),
                (
                    json!({"type": "ticket.list", "agent": "rec-1"}),
                    "allow",
                    &["grant"],
                    &["grant"],
                ),
                (
                    json!({"type": "ticket.resolve", "agent": "bot-7"}),
                    "allow",
                    &["grant"],
                    &["grant"],
                ),
                (
                    json!({"type": "deploy.api", "agent": "bot-7"}),
                    "deny",
                    &["tier-sandbox"],
                    &["tier-sandbox", "grant"],
                ),
                (
                    json!({"type": "deploy.api", "agent": "bot-ro-special"}),
                    "require_approval",
                    &["tier-prod-gated"],
                    &["tier-prod-gated", "grant"],
                ),
                (
                    json!({"type": "deploy.api", "agent": "stranger"}),
                    "allow",
                    &["grant"],
                    &["grant"],
                ),
                (
                    json!({"type": "deploy.api"}),
                    "allow",
                    &["grant"],
                    &["grant"],
                ),
            ],
        );
        let d = decide(TIERS, json!({"type": "crm.update", "agent": "drafter-1"}));
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.obligations.mode.as_deref(), Some("draft"));
        assert_eq!(
            d.reasons[1].message,
            "agent drafter-1 is at tier draft, so this write must run in mode draft"
        );
        let read = decide(TIERS, json!({"type": "crm.get", "agent": "drafter-1"}));
        assert!(
            read.obligations.is_empty(),
            "reads are not forced into draft"
        );
    }

    #[test]
    fn a_tiers_section_replaces_the_preset_and_rule_tiers_filter() {
        let policy = r#"
version: 1.0.0
agents: {"bot-*": {tier: observe}, "other-*": {tier: draft}}
tiers:
  observe:
    rules:
      - {id: observe-no-email, actions: [email.send], effect: deny, reason: observers never email}
rules:
  - {id: grant, actions: ["*"], effect: allow}
  - {id: drafts-need-review, actions: [doc.publish], tiers: [draft], effect: require_approval}
"#;
        check(
            policy,
            &[
                (
                    json!({"type": "ticket.resolve", "agent": "bot-1"}),
                    "allow",
                    &["grant"],
                    &["grant"],
                ),
                (
                    json!({"type": "email.send", "agent": "bot-1"}),
                    "deny",
                    &["observe-no-email"],
                    &["observe-no-email", "grant"],
                ),
                (
                    json!({"type": "doc.publish", "agent": "other-1"}),
                    "require_approval",
                    &["drafts-need-review"],
                    &["drafts-need-review", "grant", "tier-draft"],
                ),
                (
                    json!({"type": "doc.publish", "agent": "bot-1"}),
                    "allow",
                    &["grant"],
                    &["grant"],
                ),
            ],
        );
        let p = Policy::parse(policy).unwrap();
        assert!(p.rules().iter().all(|r| r.id().as_str() != "tier-observe"));
        assert_eq!(p.tier_of("bot-9"), Some(Tier::Observe));
        assert_eq!(p.tier_of("nobody"), None);
    }

    #[test]
    fn scopes_and_agent_patterns_limit_where_a_rule_applies() {
        let policy = r#"
version: 1.0.0
rules:
  - {id: helpdesk-only, actions: [x], scope: {app: helpdesk}, effect: allow}
  - {id: triage-only, actions: [x], scope: {app: helpdesk, workflow: triage}, effect: require_approval}
  - {id: support-agents, actions: [y], agents: ["support-*", ops-bot], effect: allow}
"#;
        check(
            policy,
            &[
                (
                    json!({"type": "x", "app": "helpdesk"}),
                    "allow",
                    &["helpdesk-only"],
                    &["helpdesk-only"],
                ),
                (
                    json!({"type": "x", "app": "helpdesk", "workflow": "triage"}),
                    "require_approval",
                    &["triage-only"],
                    &["triage-only", "helpdesk-only"],
                ),
                (
                    json!({"type": "x", "app": "billing", "workflow": "triage"}),
                    "deny",
                    &[],
                    &["-"],
                ),
                (json!({"type": "x"}), "deny", &[], &["-"]),
                (
                    json!({"type": "y", "agent": "support-1"}),
                    "allow",
                    &["support-agents"],
                    &["support-agents"],
                ),
                (
                    json!({"type": "y", "agent": "ops-bot"}),
                    "allow",
                    &["support-agents"],
                    &["support-agents"],
                ),
                (
                    json!({"type": "y", "agent": "sales-1"}),
                    "deny",
                    &[],
                    &["-"],
                ),
                (json!({"type": "y"}), "deny", &[], &["-"]),
            ],
        );
    }

    #[test]
    fn only_rules_that_can_match_the_action_are_evaluated() {
        // `broken` would fail closed if it were evaluated; it must not be for other actions.
        let policy = r#"
version: 1.0.0
rules:
  - {id: broken, actions: [other.action, "zzz.*"], when: context.missing.x == 1, effect: deny}
  - {id: prefix, actions: ["ticket.*", "ticket.re*"], effect: allow}
  - {id: suffix, actions: ["*.resolve"], effect: modify, set: {mode: draft}}
  - {id: exact, actions: [ticket.resolve], effect: allow}
"#;
        check(
            policy,
            &[
                (
                    json!({"type": "ticket.resolve"}),
                    "allow",
                    &["prefix", "exact"],
                    &["prefix", "exact", "suffix"],
                ),
                (
                    json!({"type": "ticket.reopen"}),
                    "allow",
                    &["prefix"],
                    &["prefix"],
                ),
                (
                    json!({"type": "case.resolve"}),
                    "deny",
                    &[],
                    &["suffix", "-"],
                ),
                (
                    json!({"type": "other.action"}),
                    "deny",
                    &["broken"],
                    &["broken"],
                ),
                (json!({"type": "zzz.top"}), "deny", &["broken"], &["broken"]),
            ],
        );
        assert_eq!(
            decide(policy, json!({"type": "zzz.top"})).reasons[0].code,
            ReasonCode::EvaluationError
        );
    }

    #[test]
    fn approvals_merge_to_the_strictest_requirement() {
        let policy = r#"
version: 1.0.0
rules:
  - {id: a, actions: [x], effect: require_approval, approval: {approvers: [legal], expires_in: 4h}}
  - {id: b, actions: [x], effect: require_approval, approval: {approvers: [legal, finance], quorum: 2, expires_in: 30m}}
  - {id: c, actions: [y], effect: require_approval}
"#;
        let d = decide(policy, json!({"type": "x"}));
        let a = d.approval.unwrap();
        assert_eq!(
            a.approvers,
            vec!["legal".to_string(), "finance".to_string()]
        );
        assert_eq!((a.quorum, a.expires_in), (2, Duration::from_secs(1800)));
        assert_eq!(
            decide(policy, json!({"type": "y"})).approval.unwrap(),
            ApprovalRequirement::default()
        );
    }

    #[test]
    fn reasons_render_templates_and_show_holes_they_cannot_fill() {
        let policy = r#"
version: 1.0.0
rules:
  - id: r
    actions: [x]
    effect: deny
    reason: "{{agent.id}} asked for {{action.payload.amount * 2}} on {{action.target.id}} ({{context.user.email}})"
"#;
        let d = decide(
            policy,
            json!({"type": "x", "agent": "bot", "payload": {"amount": 21}, "target": {"id": "T-1"}}),
        );
        assert_eq!(
            d.reasons[0].message,
            "bot asked for 42 on T-1 ({{context.user.email}})"
        );
        let d = decide(
            "version: 1.0.0\nrules:\n  - {id: plain, actions: [x], effect: deny}\n",
            json!({"type": "x"}),
        );
        assert_eq!(d.reasons[0].message, "rule `plain` denies `x`");
    }

    #[test]
    fn policy_errors_carry_positions() {
        let table: &[(&str, &str)] = &[
            (
                "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: alow}\n",
                "3:35: unknown effect `alow`",
            ),
            (
                "version: 1.0.0\nrules:\n  - {id: a, actions: [x], efect: deny}\n",
                "3:27: unknown field `efect`",
            ),
            (
                "version: x\n",
                "1:10: version `x` is not a semantic version",
            ),
            (
                "version: 1.0.0\non_error: allow\n",
                "2:11: on_error `allow` is not allowed",
            ),
            (
                "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: allow, approval: {approvers: [l]}}\n",
                "`approval` is only allowed on require_approval rules",
            ),
            (
                "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: deny, when: 'nope > 1'}\n",
                "unknown variable `nope`",
            ),
            (
                "version: 1.0.0\nrules:\n  - {id: tier-x, actions: [x], effect: deny}\n",
                "reserved for tier presets",
            ),
            (
                "version: 1.0.0\nrules:\n  - {id: a, effect: deny}\n",
                "rule `a` needs `actions`",
            ),
            (
                "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: deny, confidence_adjustment: 2}\n",
                "outside [-1, 1]",
            ),
            (
                "version: 1.0.0\nbudgets:\n  - {id: b, per: week, limits: {tokens: 5}}\n",
                "unknown `per` value `week`",
            ),
            (
                "version: 1.0.0\nbudgets:\n  - {id: b, per: run, limits: {coins: 5}}\n",
                "unknown limit `coins`",
            ),
            (
                "version: 1.0.0\nrate_limits:\n  - {id: r, actions: [x], per: tenant, limit: 5, window: soon}\n",
                "not a duration",
            ),
            (
                "version: 1.0.0\naudit: {keep: [payload.card]}\n",
                "must be a dotted path under `action.` or `context.`",
            ),
            (
                "version: 1.0.0\nproposals: maybe\n",
                "proposals must be `on` or `off`",
            ),
            ("", "the document is empty"),
            ("- 1\n- 2\n", "1:1: the document must be a mapping"),
        ];
        for (source, expected) in table {
            let errors = Policy::parse(source).unwrap_err().to_string();
            assert!(
                errors.contains(expected),
                "{source:?}: {errors} should contain {expected}"
            );
        }
    }

    #[test]
    fn json_policies_parse_like_yaml() {
        let json = r#"{"version": "2.1.0", "default": "allow",
                       "rules": [{"id": "no-x", "actions": ["x"], "effect": "deny", "confidence_adjustment": -0.2}]}"#;
        let p = Policy::parse(json).unwrap();
        assert_eq!(p.version().parts(), (2, 1, 0));
        assert_eq!(p.rules()[0].confidence_adjustment(), -0.2);
        assert_eq!(
            p.evaluate(
                &Action::from_value(json!({"type": "x"})).unwrap(),
                &Env::default()
            )
            .verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn versions_are_semver() {
        for ok in ["1.0.0", "0.10.2", "1.2.3-rc.1"] {
            assert!(Version::parse(ok).is_some(), "{ok}");
        }
        for bad in ["1.0", "1.0.0.0", "01.0.0", "a.b.c", "1.0.0-", ""] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn budgets_rate_limits_and_audit_are_parsed_for_the_server() {
        let p = Policy::parse(
            r#"
version: 1.0.0
budgets:
  - {id: per-run, per: run, limits: {tool_calls: 200, tokens: 500000, cost_usd: 5, duration: 30m}}
rate_limits:
  - {id: email-burst, actions: [email.send], per: tenant, limit: 100, window: 1h}
audit: {keep: [action.target.id], redact: [context.user.email]}
proposals: off
"#,
        )
        .unwrap();
        let b = &p.budgets()[0];
        assert_eq!(
            (b.per, b.limits.tool_calls, b.limits.cost_usd),
            (Per::Run, Some(200), Some(5.0))
        );
        assert_eq!(b.limits.duration, Some(Duration::from_secs(1800)));
        let r = &p.rate_limits()[0];
        assert_eq!((r.limit, r.window), (100, Duration::from_secs(3600)));
        assert_eq!(p.audit().redact, vec!["context.user.email".to_string()]);
        assert!(!p.proposals_enabled());
    }
}
