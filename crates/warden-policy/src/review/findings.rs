//! Step 4: risky shapes in what a proposal adds or changes, and the narrower change to ask
//! for when a grant is wider than its evidence or a value is past a `proposal_limits:`
//! ceiling.

use super::{Change, Evidence, Finding};
use crate::policy::{Effect, Limits, Policy, Rule};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

/// The rules the candidate adds or changes (by document content), in candidate order.
pub(super) fn touched<'a>(live_doc: &Value, cand: &'a Policy, cand_doc: &Value) -> Vec<&'a Rule> {
    let (before, after) = (by_id_of(live_doc), by_id_of(cand_doc));
    cand.rules()
        .iter()
        .filter(|r| r.preset().is_none())
        .filter(|r| {
            let id = r.id().as_str();
            before.get(id) != after.get(id)
        })
        .collect()
}

fn by_id_of(doc: &Value) -> HashMap<&str, &Value> {
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

/// Findings about the touched rules' shapes.
pub(super) fn shapes(touched: &[&Rule]) -> Vec<Finding> {
    let mut out = Vec::new();
    for rule in touched.iter().filter(|r| r.effect() == Effect::Allow) {
        let wild: Vec<&str> = rule
            .actions()
            .iter()
            .chain(rule.agents())
            .filter(|g| !g.is_exact())
            .map(|g| g.as_str())
            .collect();
        if !wild.is_empty() {
            out.push(Finding {
                code: "wildcard_grant",
                message: format!(
                    "rule `{}` allows by pattern ({}), so it also covers names nobody has seen yet",
                    rule.id(),
                    wild.join(", ")
                ),
                rule: Some(rule.id().to_string()),
            });
        }
        if rule.condition().is_some_and(|c| c.payload_escape()) {
            out.push(Finding {
                code: "payload_only_condition",
                message: format!(
                    "rule `{}` allows whenever the action's own payload says so: the agent writes the payload, so this is a backdoor",
                    rule.id()
                ),
                rule: Some(rule.id().to_string()),
            });
        }
    }
    out
}

/// What the evidence agrees on: one target id, one agent, one action type.
struct Common<'a> {
    target_id: Option<&'a str>,
    agent: Option<&'a str>,
    action_type: Option<&'a str>,
}

fn common(evidence: &[Evidence]) -> Common<'_> {
    fn one<'a>(mut values: impl Iterator<Item = Option<&'a str>>) -> Option<&'a str> {
        let first = values.next()??;
        values.all(|v| v == Some(first)).then_some(first)
    }
    Common {
        target_id: one(evidence.iter().map(|e| e.target_id.as_deref())),
        agent: one(evidence.iter().map(|e| e.agent.as_deref())),
        action_type: one(evidence.iter().map(|e| Some(e.action_type.as_str()))),
    }
}

/// Narrows the touched allow rules that are wider than the evidence, and clamps values past
/// the live policy's `proposal_limits:`, in `doc` (the candidate document). Returns the
/// findings; `doc` is changed only where a finding says so.
pub(super) fn narrow(
    live: &Policy,
    touched: &[&Rule],
    evidence: &[Evidence],
    doc: &mut Value,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let seen = common(evidence);
    for rule in touched.iter().filter(|r| r.effect() == Effect::Allow) {
        if evidence.is_empty() {
            break;
        }
        let Some(written) = rule_mut(doc, rule.id().as_str()) else {
            continue;
        };
        let mut narrower = Vec::new();
        if let Some(t) = seen.action_type
            && rule.actions().iter().any(|g| !g.is_exact())
        {
            written.insert("actions".into(), Value::from(vec![t]));
            narrower.push(format!("the action type `{t}`"));
        }
        if let Some(a) = seen.agent
            && (rule.agents().is_empty() || rule.agents().iter().any(|g| !g.is_exact()))
            && !a.contains('*')
        {
            written.insert("agents".into(), Value::from(vec![a]));
            narrower.push(format!("the agent `{a}`"));
        }
        if let Some(id) = seen.target_id
            && !rule.when().is_some_and(|w| w.contains("action.target.id"))
        {
            let quoted = Value::String(id.to_owned()).to_string();
            let when = match rule.when() {
                Some(w) => format!("action.target.id == {quoted} && ({w})"),
                None => format!("action.target.id == {quoted}"),
            };
            written.insert("when".into(), Value::String(when));
            narrower.push(format!("the target `{id}`"));
        }
        if !narrower.is_empty() {
            out.push(Finding {
                code: "wider_than_evidence",
                message: format!(
                    "rule `{}` allows more than its evidence shows: the evidence names only {}",
                    rule.id(),
                    narrower.join(", ")
                ),
                rule: Some(rule.id().to_string()),
            });
        }
    }
    let limits = live.proposal_limits();
    if let Some(max) = limits.max_approval_expiry {
        for rule in touched
            .iter()
            .filter(|r| r.effect() == Effect::RequireApproval)
        {
            let over = rule.approval().is_some_and(|a| a.expires_in > max);
            if over && let Some(written) = rule_mut(doc, rule.id().as_str()) {
                let approval = written
                    .entry("approval")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(approval) = approval.as_object_mut() {
                    approval.insert("expires_in".into(), Value::String(human(max)));
                }
                out.push(Finding {
                    code: "beyond_limit",
                    message: format!(
                        "rule `{}` keeps approvals open longer than proposal_limits.max_approval_expiry ({})",
                        rule.id(),
                        human(max)
                    ),
                    rule: Some(rule.id().to_string()),
                });
            }
        }
    }
    clamp_budgets(live, &limits.max_budget, doc, &mut out);
    out
}

fn clamp_budgets(live: &Policy, max: &Limits, doc: &mut Value, out: &mut Vec<Finding>) {
    let Some(budgets) = doc.get_mut("budgets").and_then(Value::as_array_mut) else {
        return;
    };
    for budget in budgets.iter_mut() {
        let id = budget
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let before = live.budgets().iter().find(|b| b.id == id);
        let Some(limits) = budget.get_mut("limits").and_then(Value::as_object_mut) else {
            continue;
        };
        for (name, value) in limits.iter_mut() {
            let Some(ceiling) = ceiling(max, name) else {
                continue;
            };
            let asked = number(value);
            let unchanged = before.is_some_and(|b| limit(&b.limits, name) == asked);
            if let Some(asked) = asked
                && asked > ceiling
                && !unchanged
            {
                *value = serde_json::Number::from_f64(ceiling)
                    .map(Value::Number)
                    .unwrap_or(Value::Null);
                if name == "duration" {
                    *value = Value::String(human(Duration::from_secs_f64(ceiling)));
                }
                out.push(Finding {
                    code: "beyond_limit",
                    message: format!(
                        "budget `{id}` sets {name} past proposal_limits.max_budget.{name}; clamped to the ceiling"
                    ),
                    rule: None,
                });
            }
        }
    }
}

fn ceiling(max: &Limits, name: &str) -> Option<f64> {
    limit(max, name)
}

fn limit(l: &Limits, name: &str) -> Option<f64> {
    match name {
        "tool_calls" => l.tool_calls.map(|v| v as f64),
        "tokens" => l.tokens.map(|v| v as f64),
        "turns" => l.turns.map(|v| v as f64),
        "cost_usd" => l.cost_usd,
        "duration" => l.duration.map(|d| d.as_secs_f64()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s
            .parse::<f64>()
            .ok()
            .or_else(|| humantime::parse_duration(s).ok().map(|d| d.as_secs_f64())),
        _ => None,
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn rule_mut<'a>(doc: &'a mut Value, id: &str) -> Option<&'a mut Map<String, Value>> {
    doc.get_mut("rules")?
        .as_array_mut()?
        .iter_mut()
        .find(|r| r.get("id").and_then(Value::as_str) == Some(id))?
        .as_object_mut()
}

/// The changes that turn `from` into `to`, rule by rule and field by field.
pub(super) fn changes_between(from: &Value, to: &Value) -> Vec<Change> {
    let rules = |doc: &Value| -> Vec<Value> {
        doc.get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let id = |r: &Value| r.get("id").and_then(Value::as_str).map(str::to_owned);
    let (before, after) = (rules(from), rules(to));
    let mut out = Vec::new();
    for r in &before {
        if !after.iter().any(|a| id(a) == id(r)) {
            out.push(Change::RemoveRule {
                id: id(r).unwrap_or_default(),
            });
        }
    }
    for r in &after {
        match before.iter().find(|b| id(b) == id(r)) {
            None => out.push(Change::AddRule { rule: r.clone() }),
            Some(b) if b != r => out.push(Change::ReplaceRule { rule: r.clone() }),
            Some(_) => {}
        }
    }
    let empty = Map::new();
    let (f, t) = (
        from.as_object().unwrap_or(&empty),
        to.as_object().unwrap_or(&empty),
    );
    for (key, value) in t {
        if key != "rules" && key != "version" && f.get(key) != Some(value) {
            out.push(Change::Set {
                path: key.clone(),
                value: value.clone(),
            });
        }
    }
    out
}
