//! Evaluating an action: the candidate rules from the index, their filters and
//! conditions, then combining what matched into one decision (docs/POLICY.md, Combining).

use super::{ApprovalRequirement, Effect, PermitSettings, Policy, Rule, Tier};
use crate::action::{Action, Confidence, Env};
use crate::decision::{
    ConfidenceChange, Decision, EvaluationFailure, Obligations, Reason, ReasonCode, Verdict,
};
use crate::expr::schema::FieldPath;
use crate::expr::{EvalError, Vars};
use std::convert::Infallible;

impl Policy {
    /// Evaluates an action. Never fails: an evaluation error is a deny with reason code
    /// `evaluation_error`, its detail in [`Decision::failure`].
    pub fn evaluate(&self, action: &Action, env: &Env) -> Decision {
        let (vars, tier) = self.vars(action, env);
        let candidates = self.index.candidates(action.kind.as_str());
        let mut matched: Vec<&Rule> = Vec::with_capacity(candidates.len());
        let admit_all = |_: &[FieldPath]| Ok::<(), Infallible>(());
        match self.matching(&candidates, &vars, tier, admit_all, |r| matched.push(r)) {
            Ok(()) => self.combine(&matched, &vars),
            Err(Stop::Failed(rule, e)) => self.failed(rule, e.to_string(), action),
            Err(Stop::Refused(never)) => match never {},
        }
    }

    /// The variables conditions see, and the agent's tier, from this policy's bindings.
    pub(super) fn vars<'a>(&self, action: &'a Action, env: &'a Env) -> (Vars<'a>, Option<Tier>) {
        let agent = action.agent.as_deref();
        let tier = agent.and_then(|a| self.agents.tier_of(a));
        let vars = Vars {
            action,
            agent,
            tier: tier.map(Tier::as_str),
            env,
        };
        (vars, tier)
    }

    /// Goes through `candidates` in policy order: `admit` sees what a rule's filters read,
    /// then, when the filters pass, what its condition reads; `matched` sees every rule that
    /// matches. Evaluation admits every rule; a replay refuses one that reads a path its
    /// snapshot does not hold. The first condition that cannot be evaluated stops it all,
    /// since the decision then fails closed whatever the other rules say.
    pub(super) fn matching<'p, E>(
        &'p self,
        candidates: &[u32],
        vars: &Vars<'_>,
        tier: Option<Tier>,
        mut admit: impl FnMut(&[FieldPath]) -> Result<(), E>,
        mut matched: impl FnMut(&'p Rule),
    ) -> Result<(), Stop<'p, E>> {
        let agent = vars.agent;
        for &i in candidates {
            let rule = &self.rules[i as usize];
            admit(rule.reads.filters()).map_err(Stop::Refused)?;
            if !rule.applies(agent, tier, vars.action) {
                continue;
            }
            let hit = match &rule.when {
                None => true,
                Some((_, expr)) => {
                    admit(rule.reads.condition()).map_err(Stop::Refused)?;
                    expr.eval_bool(vars).map_err(|e| Stop::Failed(rule, e))?
                }
            };
            if hit {
                matched(rule);
            }
        }
        Ok(())
    }

    /// The verdict when `strongest` is the strongest effect that decides (see [`stronger`]).
    pub(super) fn verdict(&self, strongest: Option<Effect>) -> Verdict {
        match strongest {
            Some(Effect::Deny) => Verdict::Deny,
            Some(Effect::RequireApproval) => Verdict::RequireApproval,
            Some(Effect::Allow) => Verdict::Allow,
            Some(Effect::Modify) | None => self.default,
        }
    }

    fn combine(&self, matched: &[&Rule], vars: &Vars<'_>) -> Decision {
        let strongest = matched.iter().fold(None, |s, r| stronger(s, r.effect));
        let verdict = self.verdict(strongest);
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
            // The default decides, and is stronger than the `modify` rules that matched:
            // first, so the first reason always explains the effect.
            reasons.insert(
                0,
                Reason {
                    rule: None,
                    effect: Effect::from(self.default),
                    code: ReasonCode::DefaultEffect,
                    message: format!(
                        "no rule decides `{}`, so the policy default ({}) applies",
                        vars.action.kind,
                        self.default.as_str()
                    ),
                },
            );
        }
        let confidence = vars.action.confidence.map(|c| {
            let sum: f64 = matched.iter().map(|r| r.confidence_adjustment).sum();
            ConfidenceChange {
                initial: c.get(),
                adjusted: Confidence::clamped(c.get() + sum).get(),
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
        // The strictest of the settings the deciding rules give; the defaults when none does.
        // A require_approval's permit is the one issued once the approval is granted.
        let permit = matches!(verdict, Verdict::Allow | Verdict::RequireApproval).then(|| {
            let deciding = if verdict == Verdict::Allow {
                Effect::Allow
            } else {
                Effect::RequireApproval
            };
            matched
                .iter()
                .filter(|r| r.effect == deciding)
                .filter_map(|r| r.permit)
                .reduce(|a, b| PermitSettings {
                    expires_in: a.expires_in.min(b.expires_in),
                    max_uses: a.max_uses.min(b.max_uses),
                })
                .unwrap_or_default()
        });
        Decision {
            verdict,
            reasons,
            confidence,
            obligations,
            approval,
            permit,
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
            permit: None,
            policy_version: self.version.as_str().to_owned(),
            failure: Some(EvaluationFailure {
                rule: rule.id.clone(),
                detail,
            }),
        }
    }
}

/// Why going through the candidates stopped early.
pub(super) enum Stop<'p, E> {
    /// A rule's condition could not be evaluated.
    Failed(&'p Rule, EvalError),
    /// `admit` refused a rule.
    Refused(E),
}

/// What decides once one more rule with `effect` matches: the stronger of the two, where
/// deny > require_approval > allow, and modify never decides.
pub(super) fn stronger(so_far: Option<Effect>, effect: Effect) -> Option<Effect> {
    match so_far {
        _ if effect == Effect::Modify => so_far,
        Some(s) if s.strength() >= effect.strength() => so_far,
        _ => Some(effect),
    }
}

impl Rule {
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
