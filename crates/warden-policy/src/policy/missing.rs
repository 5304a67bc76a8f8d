//! `rule_missing` (DESIGN §4, §7): the narrowest allow rule for exactly the action that was
//! denied, as a rule object an agent could submit in a proposal unchanged.
//!
//! Key decision: it is offered only when the deny came from the policy's `default` (no rule
//! allowed the action). When a rule denied it, or evaluation failed, an allow rule would
//! change nothing (deny wins), so no rule is "missing". The rule names the action type
//! exactly, the agent exactly, and the target (type and id) in `when`; an identifier that a
//! glob would read as a pattern (`*`) cannot be named exactly, so then there is none.

use serde::Serialize;

use super::Policy;
use super::model::Effect;
use crate::action::Action;
use crate::decision::{Decision, ReasonCode, Verdict};

/// An allow rule for exactly one action, in the policy document's own shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingRule {
    /// A rule id not used by the policy.
    pub id: String,
    /// Says what it allows.
    pub description: String,
    /// The action type, exactly.
    pub actions: Vec<String>,
    /// The agent, exactly (absent when the action named none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// The target, as a CEL condition (absent when the action named none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Always `allow`.
    pub effect: &'static str,
}

impl Policy {
    /// The narrowest allow rule for `action`, when `decision` denied it only because no
    /// rule allowed it, and the policy lets agents propose changes (`proposals: on`).
    pub fn rule_missing(&self, action: &Action, decision: &Decision) -> Option<MissingRule> {
        // Denied by the default, and by no rule (a matching modify rule only adds its
        // reason; a rule's deny would win over any allow).
        let by_default = decision.verdict == Verdict::Deny
            && decision.failure.is_none()
            && decision
                .reasons
                .iter()
                .any(|r| r.code == ReasonCode::DefaultEffect)
            && !decision
                .reasons
                .iter()
                .any(|r| r.rule.is_some() && r.effect == Effect::Deny);
        if !self.proposals_enabled() || !by_default {
            return None;
        }
        let kind = action.kind.as_str();
        let agent = action.agent.as_deref();
        if kind.contains('*') || agent.is_some_and(|a| a.contains('*')) {
            return None;
        }
        let target = action.target.as_ref();
        let mut conditions = Vec::new();
        if let Some(t) = target.and_then(|t| t.kind.as_deref()) {
            conditions.push(format!("action.target.type == {}", cel_string(t)));
        }
        if let Some(id) = target.and_then(|t| t.id.as_deref()) {
            conditions.push(format!("action.target.id == {}", cel_string(id)));
        }
        let what = match target.and_then(|t| t.id.as_deref()) {
            Some(id) => format!("`{kind}` on `{id}`"),
            None => format!("`{kind}`"),
        };
        Some(MissingRule {
            id: self.free_id(kind, agent),
            description: match agent {
                Some(agent) => format!("allow {what} for `{agent}`"),
                None => format!("allow {what}"),
            },
            actions: vec![kind.to_owned()],
            agents: agent.map(str::to_owned).into_iter().collect(),
            when: (!conditions.is_empty()).then(|| conditions.join(" && ")),
            effect: "allow",
        })
    }

    /// `allow-<type>-<agent>` as a rule id (a-z, 0-9, `-`, at most 64), with a number added
    /// if the policy already has it.
    pub(crate) fn free_id(&self, kind: &str, agent: Option<&str>) -> String {
        let mut base = String::from("allow");
        for part in std::iter::once(kind).chain(agent) {
            base.push('-');
            let mut last_dash = true;
            for c in part.chars() {
                if c.is_ascii_alphanumeric() {
                    base.push(c.to_ascii_lowercase());
                    last_dash = false;
                } else if !last_dash {
                    base.push('-');
                    last_dash = true;
                }
            }
            while base.ends_with('-') {
                base.pop();
            }
        }
        base.truncate(56);
        while base.ends_with('-') {
            base.pop();
        }
        let taken = |id: &str| self.rules().iter().any(|r| r.id().as_str() == id);
        if !taken(&base) {
            return base;
        }
        (2..)
            .map(|n| format!("{base}-{n}"))
            .find(|id| !taken(id))
            .unwrap_or(base)
    }
}

/// `text` as a CEL string literal.
pub(crate) fn cel_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Env, Timestamp};

    const POLICY: &str = r#"
version: 1.0.0
default: deny
proposals: on
rules:
  - id: no-deletes
    actions: [ticket.delete]
    effect: deny
  - id: reads
    actions: [ticket.get]
    effect: allow
  - id: drafts
    actions: ["*"]
    effect: modify
    set: {mode: draft}
"#;

    fn decide(policy: &Policy, json: &str) -> (Action, Decision) {
        let action = Action::from_json(json.as_bytes()).unwrap();
        let env = Env::new("t", Timestamp::from_unix_millis(0).unwrap());
        let decision = policy.evaluate(&action, &env);
        (action, decision)
    }

    #[test]
    fn the_missing_rule_allows_exactly_the_denied_action_once_added() {
        let policy = Policy::parse(POLICY).unwrap();
        let asked = r#"{"type": "ticket.resolve", "agent": "support-bot", "target": {"type": "ticket", "id": "T-\"1\\2"}}"#;
        let (action, decision) = decide(&policy, asked);
        let missing = policy.rule_missing(&action, &decision).unwrap();
        assert_eq!(missing.id, "allow-ticket-resolve-support-bot");
        assert_eq!(
            missing.when.as_deref(),
            Some(r#"action.target.type == "ticket" && action.target.id == "T-\"1\\2""#)
        );
        // Submitted unchanged, it allows this action and nothing next to it.
        let rule = serde_json::to_string(&missing).unwrap();
        let candidate = Policy::parse(&format!("{POLICY}  - {rule}\n")).unwrap();
        assert_eq!(decide(&candidate, asked).1.verdict, Verdict::Allow);
        for other in [
            r#"{"type": "ticket.resolve", "agent": "support-bot", "target": {"type": "ticket", "id": "T-2"}}"#,
            r#"{"type": "ticket.resolve", "agent": "other-bot", "target": {"type": "ticket", "id": "T-\"1\\2"}}"#,
            r#"{"type": "ticket.reopen", "agent": "support-bot", "target": {"type": "ticket", "id": "T-\"1\\2"}}"#,
        ] {
            assert_eq!(
                decide(&candidate, other).1.verdict,
                Verdict::Deny,
                "{other}"
            );
        }
        // Under the candidate nothing is missing any more.
        let (action, decision) = decide(&candidate, asked);
        assert!(
            candidate.rule_missing(&action, &decision).is_none(),
            "now allowed"
        );
    }

    #[test]
    fn only_a_deny_by_default_misses_a_rule_and_only_with_proposals_on() {
        let policy = Policy::parse(POLICY).unwrap();
        let (action, decision) = decide(&policy, r#"{"type": "ticket.delete", "agent": "a"}"#);
        assert_eq!(
            policy.rule_missing(&action, &decision),
            None,
            "a rule denied it"
        );
        let (action, decision) = decide(&policy, r#"{"type": "ticket.get"}"#);
        assert_eq!(policy.rule_missing(&action, &decision), None, "allowed");
        let (action, decision) = decide(&policy, r#"{"type": "ticket.close"}"#);
        let missing = policy.rule_missing(&action, &decision).unwrap();
        assert_eq!((missing.agents.len(), missing.when), (0, None));
        let (action, decision) = decide(&policy, r#"{"type": "ticket.close", "agent": "a*"}"#);
        assert_eq!(
            policy.rule_missing(&action, &decision),
            None,
            "a glob agent"
        );
        // Off unless the policy opts in.
        assert!(
            !Policy::parse("version: 1.0.0\n")
                .unwrap()
                .proposals_enabled()
        );
        let off = Policy::parse(&POLICY.replace("proposals: on", "proposals: off")).unwrap();
        let (action, decision) = decide(&off, r#"{"type": "ticket.close"}"#);
        assert_eq!(off.rule_missing(&action, &decision), None);
        let taken = Policy::parse(&format!(
            "{POLICY}  - {{id: allow-ticket-close, actions: [x], effect: deny}}\n"
        ))
        .unwrap();
        let (action, decision) = decide(&taken, r#"{"type": "ticket.close"}"#);
        assert_eq!(
            taken.rule_missing(&action, &decision).unwrap().id,
            "allow-ticket-close-2"
        );
    }
}
