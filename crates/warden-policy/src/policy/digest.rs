//! The agent's policy digest (DESIGN §7): what one agent may do under a policy, as short
//! Markdown for its system prompt, generated from the compiled policy.
//!
//! Key decision: the digest lists the rules that can apply to the agent (its id against
//! each rule's `agents`, its tier against `tiers`) grouped by effect, each with its actions,
//! scope and condition as written, and the rule's description (or its reason as written).
//! It says what the policy says, never more: a rule whose condition reads the request is
//! shown with that condition, not resolved. Output depends only on the policy and the agent
//! id, so the same pair always gives the same bytes.

use std::fmt::Write;
use std::time::Duration;

use super::Policy;
use super::model::{Effect, Limits, Per, Rule};
use crate::decision::Verdict;

impl Policy {
    /// The digest of this policy for `agent`, as Markdown; for `None`, what an action that
    /// names no agent may do (only rules without `agents` or `tiers` apply to it).
    pub fn digest(&self, agent: Option<&str>) -> String {
        let tier = agent.and_then(|a| self.tier_of(a));
        let applies = |rule: &Rule| {
            (rule.agents().is_empty()
                || agent.is_some_and(|a| rule.agents().iter().any(|g| g.matches(a))))
                && (rule.tiers().is_empty() || tier.is_some_and(|t| rule.tiers().contains(&t)))
        };
        let mut out = String::new();
        let who = match agent {
            Some(agent) => format!("`{agent}`"),
            None => "an action that names no agent".to_owned(),
        };
        let _ = writeln!(
            out,
            "# What {who} may do (policy {})\n",
            self.version().as_str()
        );
        match (agent, tier) {
            (_, Some(t)) => {
                let _ = writeln!(out, "Autonomy tier: **{}**.", t.as_str());
            }
            (Some(_), None) => out.push_str("No autonomy tier is bound to this agent.\n"),
            (None, None) => out.push_str("No agent, so no agent's rules or tier apply.\n"),
        }
        let _ = writeln!(
            out,
            "Warden checks every action before it runs. An action no rule below decides is {}.",
            match self.default_verdict() {
                Verdict::Allow => "allowed",
                Verdict::Deny => "**denied**",
                Verdict::RequireApproval => "held for a human's approval",
            }
        );
        let sections = [
            (Effect::Deny, "You may not"),
            (Effect::RequireApproval, "Needs a human's approval first"),
            (Effect::Allow, "You may"),
            (Effect::Modify, "Changed before they run"),
        ];
        for (effect, title) in sections {
            let rules: Vec<&Rule> = self
                .rules()
                .iter()
                .filter(|r| r.effect() == effect && applies(r))
                .collect();
            if rules.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n## {title}\n");
            for rule in rules {
                out.push_str(&line(rule));
                out.push('\n');
            }
        }
        if effect_note_needed(self) {
            out.push_str("\nA deny always wins over an approval, and an approval over an allow.\n");
        }
        let limits = self.limit_lines(agent);
        if !limits.is_empty() {
            out.push_str("\n## Budgets and rate limits\n\n");
            for l in limits {
                out.push_str(&l);
                out.push('\n');
            }
        }
        if !self.guidance().is_empty() {
            out.push_str("\n## Guidance\n");
            for g in self.guidance() {
                let _ = writeln!(out, "\n### {}\n\n{}", g.name.trim(), g.content.trim());
            }
        }
        out
    }

    fn limit_lines(&self, agent: Option<&str>) -> Vec<String> {
        let mut lines = Vec::new();
        for b in self.budgets() {
            let mut parts = limit_parts(&b.limits);
            if let Some(count) = &b.count {
                parts.push(format!("{} × {}", count.limit, globs(&count.actions)));
            }
            if parts.is_empty() {
                continue;
            }
            lines.push(format!(
                "- `{}`, {}: {}",
                b.id,
                per(b.per, agent),
                parts.join(", ")
            ));
        }
        for r in self.rate_limits() {
            lines.push(format!(
                "- `{}`, {}: at most {} × {} per {}",
                r.id,
                per(r.per, agent),
                r.limit,
                globs(&r.actions),
                span(r.window)
            ));
        }
        lines
    }
}

/// Whether rules of different strengths apply, so that the precedence is worth saying.
fn effect_note_needed(policy: &Policy) -> bool {
    let has = |e: Effect| policy.rules().iter().any(|r| r.effect() == e);
    has(Effect::Deny) && (has(Effect::Allow) || has(Effect::RequireApproval))
}

/// One rule as a list item: actions, scope, condition, what it requires, and why.
fn line(rule: &Rule) -> String {
    let mut text = format!("- {}", globs(rule.actions()));
    let scope = rule.scope();
    if let Some(app) = &scope.app {
        let _ = write!(text, " in app `{app}`");
    }
    if let Some(workflow) = &scope.workflow {
        let _ = write!(text, " in workflow `{workflow}`");
    }
    if let Some(when) = rule.when() {
        let _ = write!(text, " when `{}`", when.trim());
    }
    if let Some(approval) = rule.approval() {
        let who = if approval.approvers.is_empty() {
            "any approver".to_owned()
        } else {
            approval
                .approvers
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let quorum = if approval.quorum > 1 {
            format!("{} approvers of ", approval.quorum)
        } else {
            String::new()
        };
        let _ = write!(
            text,
            " — approved by {quorum}{who} within {}",
            span(approval.expires_in)
        );
    }
    let set = rule.set();
    if let Some(mode) = &set.mode {
        let _ = write!(text, " — run in mode `{mode}`");
    }
    for (name, value) in &set.limits {
        let _ = write!(text, ", at most {value} {}", name.replace('_', " "));
    }
    let why = rule.description().or(rule.reason());
    if let Some(why) = why {
        let _ = write!(text, ": {}", why.trim());
    }
    let _ = write!(text, " (rule `{}`)", rule.id().as_str());
    text
}

fn globs(globs: &[crate::glob::Glob]) -> String {
    globs
        .iter()
        .map(|g| format!("`{g}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn per(per: Per, agent: Option<&str>) -> String {
    match (per, agent) {
        (Per::Run, _) => "per run (`run_id`)".to_owned(),
        (Per::Agent, Some(agent)) => format!("for `{agent}`"),
        (Per::Agent, None) => "per agent".to_owned(),
        (Per::Tenant, _) => "shared by every agent of the tenant".to_owned(),
    }
}

fn limit_parts(l: &Limits) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(n) = l.tool_calls {
        parts.push(format!("{n} tool calls"));
    }
    if let Some(n) = l.tokens {
        parts.push(format!("{n} tokens"));
    }
    if let Some(usd) = l.cost_usd {
        parts.push(format!("${usd}"));
    }
    if let Some(n) = l.turns {
        parts.push(format!("{n} turns"));
    }
    if let Some(d) = l.duration {
        parts.push(format!("{} long", span(d)));
    }
    parts
}

/// A duration as a policy writes it: `4h`, `30m`, `1h30m`, `45s`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return "0s".to_owned();
    }
    let (h, m, s) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEXUS: &str = include_str!("../../../../examples/nexus/nexus.yaml");

    #[test]
    fn the_digest_says_what_this_agent_may_do_and_nothing_of_other_agents_rules() {
        let policy = Policy::parse(NEXUS).unwrap();
        let digest = policy.digest(Some("support-bot"));
        assert!(digest.starts_with("# What `support-bot` may do (policy 1.0.0)\n"));
        assert!(digest.contains("Autonomy tier: **draft**."));
        assert!(digest.contains("is **denied**"));
        assert!(digest.contains(
            "- `ticket.escalate` when `\"legal_sensitive\" in context.ticket.flags` — approved by `legal` within 4h"
        ));
        assert!(digest.contains("in app `helpdesk` when `action.payload.amount > 500`"));
        assert!(digest.contains("(rule `support-may-act`)"));
        assert!(
            !digest.contains("triage-reads"),
            "another agent's rule:\n{digest}"
        );
        assert!(digest.contains("- `email-burst`, shared by every agent of the tenant: at most 100 × `email.send` per 1h"));
        assert!(digest.contains("200 tool calls, 500000 tokens, $5, 30m long"));
        assert!(digest.contains("### Escalate, don't guess"));
        // Deny first, then approval, then allow: the order in which they win.
        let at = |s: &str| digest.find(s).unwrap();
        assert!(
            at("## You may not") < at("## Needs a human")
                && at("## Needs a human") < at("## You may\n")
        );
        // A page at most, and the same bytes every time.
        assert!(
            digest.lines().count() <= 60,
            "{} lines:\n{digest}",
            digest.lines().count()
        );
        assert_eq!(policy.digest(Some("support-bot")), digest);

        let triage = policy.digest(Some("triage-bot"));
        assert!(triage.contains("Autonomy tier: **observe**."));
        assert!(triage.contains("(rule `triage-reads`)"));
        assert!(!triage.contains("support-may-act"));
        let stranger = policy.digest(Some("unknown-bot"));
        assert!(stranger.contains("No autonomy tier is bound to this agent."));
        assert!(!stranger.contains("## You may\n"), "{stranger}");
        let nobody = policy.digest(None);
        assert!(nobody.starts_with("# What an action that names no agent may do"));
        assert!(!nobody.contains("support-may-act") && !nobody.contains("tier-draft"));
        assert!(
            nobody.contains("(rule `low-confidence-resolve`)"),
            "{nobody}"
        );
    }

    #[test]
    fn spans_read_as_policies_write_them() {
        assert_eq!(span(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(span(Duration::from_secs(5400)), "1h30m");
        assert_eq!(span(Duration::from_secs(45)), "45s");
        assert_eq!(span(Duration::ZERO), "0s");
    }
}
