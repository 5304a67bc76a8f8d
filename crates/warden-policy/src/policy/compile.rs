//! Validating a document into a compiled policy: every problem is collected with its
//! position, so `warden check` shows them all at once.

use super::agents::AgentMap;
use super::index::Index;
use super::model::{
    ApprovalRequirement, Budget, CountLimit, Effect, Guidance, Limits, Per, PermitSettings,
    ProposalLimits, RateLimit, Rule, RuleId, Scope, Tier, Version,
};
use super::snapshot::{Plan, Reads};
use super::{AuditSpec, Policy};
use crate::decision::{Obligations, Verdict};
use crate::document::{Entries, PolicyError, PolicyErrors, RawPolicy, RawRule};
use crate::expr::Expr;
use crate::expr::schema::FieldPath;
use crate::glob::Glob;
use crate::template::Template;
use marked_yaml::{Span, Spanned};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

#[derive(Default)]
pub(super) struct Checker {
    pub(super) errors: Vec<PolicyError>,
    /// Conditions and reason templates already compiled, by their source: a document that
    /// is mostly another (a proposal's candidate) reuses them instead of compiling again.
    pub(super) known: HashMap<String, Expr>,
    pub(super) known_templates: HashMap<String, Template>,
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
        if let Some(e) = self.known.get(s.as_str()) {
            return Some(e.clone());
        }
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
                "turns" => limits.turns = count(self),
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
                        "unknown limit `{other}`; expected tool_calls, tokens, cost_usd, turns or duration"
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

    pub(super) fn rule(&mut self, raw: &RawRule, preset: Option<Tier>) -> Option<Rule> {
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
            .and_then(|s| match self.known_templates.get(s.as_str()) {
                Some(t) => Some(t.clone()),
                None => match Template::compile(s.as_str()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        self.err(s.span(), format!("invalid reason template: {}", e.message));
                        None
                    }
                },
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
        let permit = match (&raw.permit, effect) {
            (Some(p), Some(e)) if !matches!(e, Effect::Allow | Effect::RequireApproval) => {
                self.err(
                    p.span(),
                    format!(
                        "`permit` is only allowed on allow and require_approval rules, not {}",
                        e.as_str()
                    ),
                );
                None
            }
            (Some(p), _) => {
                let default = PermitSettings::default();
                let expires_in = match &p.expires_in {
                    Some(text) => match self.duration(text, "permit.expires_in") {
                        Some(d)
                            if d < Duration::from_secs(1) || d > PermitSettings::MAX_EXPIRES_IN =>
                        {
                            self.err(
                                text.span(),
                                format!(
                                    "permit.expires_in `{}` is outside 1s to 24h",
                                    text.as_str()
                                ),
                            );
                            default.expires_in
                        }
                        Some(d) => d,
                        None => default.expires_in,
                    },
                    None => default.expires_in,
                };
                let max_uses = match &p.max_uses {
                    Some(n) if **n == 0 || **n > PermitSettings::MAX_USES => {
                        self.err(
                            n.span(),
                            format!(
                                "permit.max_uses {} is outside 1 to {}",
                                **n,
                                PermitSettings::MAX_USES
                            ),
                        );
                        default.max_uses
                    }
                    Some(n) => **n,
                    None => default.max_uses,
                };
                Some(PermitSettings {
                    expires_in,
                    max_uses,
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
                    .turns
                    .map(|n| map.insert("turns".to_owned(), n as f64));
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
        let scope = raw
            .scope
            .as_ref()
            .map(|s| Scope {
                app: s.app.clone(),
                workflow: s.workflow.clone(),
            })
            .unwrap_or_default();
        let reads = Reads::new(
            &agents,
            &tiers,
            &scope,
            when.as_ref().map(|(_, e)| e),
            reason.as_ref(),
        );
        Some(Rule {
            id: id?,
            description: raw.description.clone(),
            actions,
            agents,
            tiers,
            scope,
            when,
            effect: effect?,
            reason,
            reason_source: raw.reason.as_ref().map(|s| s.as_str().to_owned()),
            confidence_adjustment,
            approval,
            permit,
            set,
            protected: raw.protected.unwrap_or(false),
            preset,
            reads,
        })
    }
}

pub(super) fn compile(raw: RawPolicy, like: Option<&Policy>) -> Result<Policy, PolicyErrors> {
    let mut c = Checker::default();
    for rule in like.map(Policy::rules).unwrap_or_default() {
        if let Some((source, expr)) = &rule.when {
            c.known.insert(source.clone(), expr.clone());
        }
        if let (Some(source), Some(t)) = (&rule.reason_source, &rule.reason) {
            c.known_templates.insert(source.clone(), t.clone());
        }
    }

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
            agents.exact_globs.push((glob, tier));
        } else {
            agents.patterns.push((glob, tier));
        }
    }
    agents
        .exact_globs
        .sort_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
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
        let limits = match &b.limits {
            Some(map) => {
                if map.is_empty() && b.count.is_none() {
                    c.err(map.span(), "a budget needs at least one limit");
                }
                let limits = c.limits(map);
                // Only a run has a start to measure from; an agent or a tenant never ends.
                if limits.duration.is_some() && per.is_some_and(|p| p != Per::Run) {
                    c.err(
                        map.span(),
                        "limit `duration` applies only to budgets with `per: run`",
                    );
                }
                limits
            }
            None => {
                if b.count.is_none() {
                    c.err(b.id.span(), "a budget needs `limits` or `count`");
                }
                Limits::default()
            }
        };
        let count = b.count.as_ref().map(|raw| {
            if *raw.limit == 0 {
                c.err(raw.limit.span(), "limit must be at least 1");
            }
            CountLimit {
                actions: c.action_patterns(&raw.actions),
                limit: *raw.limit,
            }
        });
        if let Some(per) = per {
            budgets.push(Budget {
                id: b.id.as_str().to_owned(),
                per,
                limits,
                count,
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

    // One definition of the action's fields (expr/schema.rs) decides which paths exist, so
    // an unknown path is refused here just as it is in a condition.
    let mut audit = AuditSpec::default();
    if let Some(a) = &raw.audit {
        for (list, redact) in [(&a.keep, false), (&a.redact, true)] {
            for path in list {
                match FieldPath::parse(path.as_str()) {
                    Ok(p) if redact => audit.push_redact(p),
                    Ok(p) => audit.push_keep(p),
                    Err(message) => c.err(path.span(), message),
                }
            }
        }
    }

    let proposals = match raw.proposals.as_ref().map(|p| p.as_str()) {
        // Off unless the policy opts in: an agent-controlled path to policy changes is
        // something a team chooses.
        Some("on" | "true") => true,
        None | Some("off" | "false") => false,
        Some(other) => {
            if let Some(p) = &raw.proposals {
                c.err(
                    p.span(),
                    format!("proposals must be `on` or `off`, not `{other}`"),
                );
            }
            false
        }
    };

    let proposal_limits = match &raw.proposal_limits {
        None => ProposalLimits::default(),
        Some(l) => ProposalLimits {
            max_budget: c.limits(&l.max_budget),
            max_approval_expiry: l
                .max_approval_expiry
                .as_ref()
                .and_then(|d| c.duration(d, "max_approval_expiry")),
        },
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
    let snapshots = Plan::new(&rules, &audit);
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
        proposal_limits,
        guidance,
        snapshots,
    })
}
