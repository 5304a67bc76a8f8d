//! Learning from friction (DESIGN §7): the proposal Warden drafts itself when the same
//! agent keeps being denied, or keeps needing a human's approval, for the same kind of
//! action — a *suggestion* (source `observed`) that goes through the same [`review`] as an
//! agent's proposal.
//!
//! Key decision: a suggestion is drafted as the narrowest change that removes exactly the
//! friction observed — the action type, the agent and the target's type, nothing wider — and
//! says honestly what it would let through. Whether it is acceptable is the review's to
//! decide, never this module's: removing friction lets more through, so in practice the
//! review finds it broadening and a human decides.
//!
//! [`review`]: super::review

use super::{Change, MAX_EVIDENCE, Proposal};
use crate::policy::{Policy, cel_string};
use serde_json::{Value, json};

/// What kind of friction was observed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Friction {
    /// The action was denied by the policy's `default` (no rule allowed it).
    Denied,
    /// The action needed an approval, which a human granted.
    Approved {
        /// The `require_approval` rule that asked for it.
        rule: String,
    },
}

/// Repeated friction of one agent with one kind of action: what suggestions are
/// deduplicated by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrictionKey {
    /// Denied or approved.
    pub friction: Friction,
    /// The agent.
    pub agent: String,
    /// The action type.
    pub action_type: String,
    /// The target's type, when the actions named one.
    pub target_type: Option<String>,
}

impl FrictionKey {
    /// The key as stored: a JSON array, so no agent or type name can make two keys alike.
    pub fn as_key(&self) -> String {
        let (kind, rule) = match &self.friction {
            Friction::Denied => ("denied", None),
            Friction::Approved { rule } => ("approved", Some(rule.as_str())),
        };
        json!([kind, self.agent, self.action_type, self.target_type, rule]).to_string()
    }

    /// `` `crm.export` on `account` targets `` — the kind of action, for a human.
    fn what(&self) -> String {
        match &self.target_type {
            Some(t) => format!("`{}` on `{t}` targets", self.action_type),
            None => format!("`{}` without a target", self.action_type),
        }
    }

    /// The CEL condition on the target's type (`true` when the actions named none: then the
    /// rule holds for any target, and says so in its risks).
    fn target_condition(&self) -> Option<String> {
        self.target_type
            .as_deref()
            .map(|t| format!("action.target.type == {}", cel_string(t)))
    }
}

/// The suggestion for `hits` occurrences of the friction `key`, named by `evidence` (decision
/// ids, newest first; at most [`MAX_EVIDENCE`] are kept), against the `live` policy. `None`
/// when no exact change can be drafted: the agent or type holds a `*` (a glob could not name
/// it exactly), or the rule that asked for approval is no longer in the policy.
pub fn draft(key: &FrictionKey, hits: u64, evidence: &[String], live: &Policy) -> Option<Proposal> {
    if key.agent.contains('*') || key.action_type.contains('*') || key.agent.is_empty() {
        return None;
    }
    let agent = key.agent.as_str();
    let what = key.what();
    let allow = {
        let mut rule = json!({
            "id": live.free_id(&key.action_type, Some(agent)),
            "description": format!("allow {what} for `{agent}` (observed friction)"),
            "actions": [key.action_type],
            "agents": [agent],
            "effect": "allow",
        });
        if let (Some(when), Value::Object(fields)) = (key.target_condition(), &mut rule) {
            fields.insert("when".into(), Value::String(when));
        }
        Change::AddRule { rule }
    };
    let mut risks = vec![format!(
        "`{agent}` could perform {what} without a human, on any such target, including ones \
         it was never seen asking for"
    )];
    if key.target_type.is_none() {
        risks.push(format!(
            "the rule does not restrict the target: it holds for any `{}` action of `{agent}`",
            key.action_type
        ));
    }
    let (rationale, changes) = match &key.friction {
        Friction::Denied => {
            risks.push(
                "the denials may have been right: an agent that keeps asking for what it may not \
                 do can be misconfigured or compromised"
                    .to_owned(),
            );
            (
                format!(
                    "observed by Warden, not proposed by an agent: `{agent}` was denied {what} \
                     {hits} times (no rule allows it); this rule would allow exactly that for \
                     that agent"
                ),
                vec![allow],
            )
        }
        Friction::Approved { rule } => {
            let (index, asking) = live
                .rules()
                .iter()
                .enumerate()
                .find(|(_, r)| r.id().as_str() == rule)?;
            let mut exempt = format!("action.agent == {}", cel_string(agent));
            if let Some(target) = key.target_condition() {
                exempt = format!("{exempt} && {target}");
            }
            let when = match asking.when() {
                Some(w) => format!("!({exempt}) && ({w})"),
                None => format!("!({exempt})"),
            };
            // The test pins the index to the rule's id: if the document changed, the change
            // no longer applies rather than editing another rule.
            let patch = json!([
                {"op": "test", "path": format!("/rules/{index}/id"), "value": rule},
                {"op": if asking.when().is_some() { "replace" } else { "add" },
                 "path": format!("/rules/{index}/when"), "value": when},
            ]);
            let patch = serde_json::from_value(patch).ok()?;
            risks.push(format!(
                "a human approved each of these one by one; this takes the approval of rule \
                 `{rule}` away for all future ones of `{agent}`"
            ));
            (
                format!(
                    "observed by Warden, not proposed by an agent: a human approved {what} for \
                     `{agent}` {hits} times (rule `{rule}` asks for approval); this change lets \
                     that agent do exactly that without asking"
                ),
                vec![Change::JsonPatch { patch }, allow],
            )
        }
    };
    Some(Proposal {
        rationale,
        risks,
        confidence: None,
        evidence: evidence
            .iter()
            .take(MAX_EVIDENCE)
            .map(|id| format!("decision:{id}"))
            .collect(),
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Classification, Inputs, Status, document, review};
    use super::*;
    use crate::action::Timestamp;
    use std::time::Duration;

    const LIVE: &str = r#"
version: 1.0.0
default: deny
proposals: on
rules:
  - id: read-tickets
    actions: [ticket.read]
    effect: allow
  - id: refunds-need-approval
    actions: [ticket.refund]
    when: action.payload.amount > 10
    effect: require_approval
  - id: allow-refunds
    actions: [ticket.refund]
    effect: allow
"#;

    fn key(friction: Friction, target: Option<&str>) -> FrictionKey {
        FrictionKey {
            friction,
            agent: "support-bot".into(),
            action_type: "crm.export".into(),
            target_type: target.map(str::to_owned),
        }
    }

    fn check(key: &FrictionKey) -> super::super::Review {
        let live = Policy::parse(LIVE).unwrap();
        let doc = document(LIVE).unwrap();
        let ids: Vec<String> = (1..=3).map(|i| format!("d{i}")).collect();
        let proposal = draft(key, 3, &ids, &live).unwrap();
        // What the server stores must read back as a proposal.
        let value = serde_json::to_value(&proposal).unwrap();
        assert_eq!(Proposal::from_value(value).unwrap(), proposal);
        review(
            &proposal,
            &Inputs {
                tenant: "acme",
                live_document: &doc,
                live: &live,
                proposer: None,
                evidence: &[],
                recent: &[],
                history: &[],
                replaced: &[],
                now: Timestamp::from_unix_millis(1_800_000_000_000).unwrap(),
                solver_timeout: Duration::from_secs(5),
            },
        )
        .unwrap()
    }

    #[test]
    fn repeated_denials_draft_an_exact_allow_that_a_human_must_approve() {
        let key = key(Friction::Denied, Some("account"));
        let live = Policy::parse(LIVE).unwrap();
        let proposal = draft(&key, 3, &["d1".into(), "d2".into()], &live).unwrap();
        let [Change::AddRule { rule }] = proposal.changes.as_slice() else {
            panic!("one add_rule expected: {:?}", proposal.changes);
        };
        assert_eq!(rule["id"], "allow-crm-export-support-bot");
        assert_eq!(rule["actions"], json!(["crm.export"]));
        assert_eq!(rule["agents"], json!(["support-bot"]));
        assert_eq!(rule["when"], "action.target.type == \"account\"");
        assert_eq!(proposal.evidence, ["decision:d1", "decision:d2"]);
        assert!(
            proposal
                .rationale
                .contains("denied `crm.export` on `account` targets 3 times")
        );
        assert!(!proposal.risks.is_empty());

        let review = check(&key);
        assert_eq!(review.classification, Classification::Broadening);
        assert_eq!(review.status, Status::NeedsHuman);
        assert!(!review.counterexamples.is_empty());
    }

    #[test]
    fn repeated_approvals_draft_an_exemption_from_the_asking_rule() {
        let mut key = key(
            Friction::Approved {
                rule: "refunds-need-approval".into(),
            },
            Some("ticket"),
        );
        key.action_type = "ticket.refund".into();
        let review = check(&key);
        assert_eq!(review.classification, Classification::Broadening);
        assert_eq!(review.status, Status::NeedsHuman);
        let candidate = Policy::parse(&review.candidate.source).unwrap();
        let asking = candidate
            .rules()
            .iter()
            .find(|r| r.id().as_str() == "refunds-need-approval")
            .unwrap();
        assert_eq!(
            asking.when(),
            Some(
                "!(action.agent == \"support-bot\" && action.target.type == \"ticket\") && \
                 (action.payload.amount > 10)"
            )
        );
    }

    #[test]
    fn no_draft_for_what_a_glob_cannot_name_or_a_rule_that_is_gone() {
        let live = Policy::parse(LIVE).unwrap();
        let mut glob = key(Friction::Denied, None);
        glob.agent = "bot-*".into();
        assert_eq!(draft(&glob, 3, &[], &live), None);
        let gone = key(
            Friction::Approved {
                rule: "no-such-rule".into(),
            },
            None,
        );
        assert_eq!(draft(&gone, 3, &[], &live), None);
    }

    #[test]
    fn ids_stay_valid_and_free_and_keys_stay_distinct() {
        let live = Policy::parse(LIVE).unwrap();
        let mut long = key(Friction::Denied, None);
        long.action_type = format!("{}.export", "x".repeat(100));
        let proposal = draft(&long, 3, &[], &live).unwrap();
        let Change::AddRule { rule } = &proposal.changes[0] else {
            panic!("an add_rule expected");
        };
        let id = rule["id"].as_str().unwrap();
        assert!(id.len() <= 64, "{id}");
        // It compiles: the id is a valid rule id.
        let doc = document(LIVE).unwrap();
        let mut changed = doc.clone();
        changed["rules"].as_array_mut().unwrap().push(rule.clone());
        assert!(Policy::parse(&changed.to_string()).is_ok());

        let a = key(Friction::Denied, Some("a\",\"b"));
        let mut b = key(Friction::Denied, Some("a"));
        b.agent = "support-bot\",\"b".into();
        assert_ne!(a.as_key(), b.as_key());
    }
}
