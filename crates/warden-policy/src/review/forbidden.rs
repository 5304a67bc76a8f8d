//! What no proposal may do, whatever the proof says (DESIGN §7, step 2). Each check compares
//! the live and candidate documents (as written, for what the author protects) or policies
//! (as compiled, for what the evaluator does).

use crate::decision::Verdict;
use crate::policy::{Effect, Policy};
use serde_json::Value;

/// The forbidden things the candidate does, each as a sentence; empty when none.
pub(super) fn violations(
    live: &Policy,
    live_doc: &Value,
    cand: &Policy,
    cand_doc: &Value,
) -> Vec<String> {
    let mut out = Vec::new();
    if live.default_verdict() == Verdict::Deny && cand.default_verdict() != Verdict::Deny {
        out.push("it changes `default` from deny to allow".to_owned());
    }
    if live_doc.get("on_error") != cand_doc.get("on_error") {
        out.push("it changes `on_error`, which keeps evaluation errors failing closed".to_owned());
    }
    audit(live, cand, &mut out);
    if live.proposals_enabled() != cand.proposals_enabled()
        || live_doc.get("proposals") != cand_doc.get("proposals")
    {
        out.push("it changes `proposals`, which only a human may switch".to_owned());
    }
    if live_doc.get("proposal_limits") != cand_doc.get("proposal_limits") {
        out.push("it changes `proposal_limits`, the ceilings proposals are held to".to_owned());
    }
    protected(live_doc, cand_doc, &mut out);
    approvals(live, cand, &mut out);
    tiers(live, cand, &mut out);
    for rule in cand.rules() {
        let everything = rule.actions().iter().any(|g| g.as_str() == "*");
        let new = !live.rules().iter().any(|r| {
            r.id() == rule.id() && r.effect() == rule.effect() && r.actions() == rule.actions()
        });
        if everything && rule.effect() == Effect::Allow && new && rule.preset().is_none() {
            out.push(format!(
                "rule `{}` allows every action type (`*`)",
                rule.id()
            ));
        }
    }
    out
}

fn audit(live: &Policy, cand: &Policy, out: &mut Vec<String>) {
    let (l, c) = (live.audit(), cand.audit());
    for kept in c.keep() {
        if !l.keep().contains(kept) {
            out.push(format!(
                "it stores `{kept}` verbatim in the audit log (audit.keep), which the live policy does not"
            ));
        }
    }
    for redacted in l.redact() {
        if !c.redact().contains(redacted) {
            out.push(format!("it stops redacting `{redacted}` (audit.redact)"));
        }
    }
}

fn rules_by_id(doc: &Value) -> Vec<(&str, &Value)> {
    doc.get("rules")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| Some((r.get("id")?.as_str()?, r)))
                .collect()
        })
        .unwrap_or_default()
}

fn protected(live_doc: &Value, cand_doc: &Value, out: &mut Vec<String>) {
    let cand = rules_by_id(cand_doc);
    for (id, rule) in rules_by_id(live_doc) {
        if rule.get("protected") != Some(&Value::Bool(true)) {
            continue;
        }
        match cand.iter().find(|(cid, _)| *cid == id) {
            None => out.push(format!("it removes the protected rule `{id}`")),
            Some((_, new)) if *new != rule => out.push(format!(
                "it changes the protected rule `{id}`; protected rules change only by a human's publish"
            )),
            Some(_) => {}
        }
    }
}

fn approvals(live: &Policy, cand: &Policy, out: &mut Vec<String>) {
    for rule in live
        .rules()
        .iter()
        .filter(|r| r.effect() == Effect::RequireApproval)
    {
        let Some(new) = cand.rules().iter().find(|r| r.id() == rule.id()) else {
            continue;
        };
        let (Some(before), after) = (rule.approval(), new.approval()) else {
            continue;
        };
        let default = Default::default();
        let after = after.unwrap_or(&default);
        let removed: Vec<&String> = before
            .approvers
            .iter()
            .filter(|g| !after.approvers.contains(g))
            .collect();
        if !removed.is_empty() && new.effect() == Effect::RequireApproval {
            let names: Vec<&str> = removed.iter().map(|s| s.as_str()).collect();
            out.push(format!(
                "it removes approvers {} from rule `{}`",
                names.join(", "),
                rule.id()
            ));
        }
        if new.effect() == Effect::RequireApproval && after.quorum < before.quorum {
            out.push(format!(
                "it lowers the quorum of rule `{}` from {} to {}",
                rule.id(),
                before.quorum,
                after.quorum
            ));
        }
    }
}

fn tiers(live: &Policy, cand: &Policy, out: &mut Vec<String>) {
    // Every entry either side names, read as an agent id: an exact entry is that agent, and
    // a pattern read as a name matches itself, so a raised pattern is caught too.
    let mut names: Vec<&str> = live
        .agent_entries()
        .into_iter()
        .chain(cand.agent_entries())
        .map(|(g, _)| g.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let (before, after) = (live.tier_of(name), cand.tier_of(name));
        if let (Some(b), Some(a)) = (before, after)
            && a > b
        {
            out.push(format!(
                "it raises agent `{name}` from tier {} to {}",
                b.as_str(),
                a.as_str()
            ));
        }
    }
}
