//! What changed between two policy documents, field by field, for review before a policy is
//! replaced.
//!
//! The diff compares the documents as written, not their compiled form: tier presets are not
//! the author's rules, and a reviewer wants to see `when` as it was typed. Rules are matched
//! by `id` and guidance sections by `name`, so moving an entry is not a rewrite of every entry
//! after it. Mappings are compared key by key down to their leaves; every other list is
//! compared as a whole, since its items have no identity to match them by.

use super::{Policy, RuleId};
use crate::document::{self, PolicyErrors};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// What changed from one policy document to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDiff {
    settings: Vec<FieldChange>,
    added: Vec<RuleEntry>,
    removed: Vec<RuleEntry>,
    changed: Vec<RuleChange>,
    reordered: Vec<RuleId>,
}

/// One value that differs: where it is, and what it was and became (`None` when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    path: Vec<String>,
    before: Option<Value>,
    after: Option<Value>,
}

/// A rule only one of the documents has, as written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEntry {
    id: RuleId,
    value: Value,
}

/// A rule both documents have, with the fields that differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleChange {
    id: RuleId,
    fields: Vec<FieldChange>,
}

/// Which of the two documents failed to compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffSide {
    /// The document diffed from.
    From,
    /// The document diffed to.
    To,
}

/// A document that is not a valid policy, so there is nothing to compare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the `{side}` policy does not compile: {errors}")]
pub struct DiffError {
    /// Which document.
    pub side: DiffSide,
    /// Its problems, as `Policy::parse` reports them.
    pub errors: PolicyErrors,
}

impl fmt::Display for DiffSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiffSide::From => "from",
            DiffSide::To => "to",
        })
    }
}

/// One side, as written: its rules in document order and everything else.
struct Document {
    rules: Vec<(RuleId, Value)>,
    settings: Value,
}

impl Document {
    fn load(source: &str, side: DiffSide) -> Result<Self, DiffError> {
        let fail = move |errors| DiffError { side, errors };
        let policy = Policy::parse(source).map_err(fail)?;
        let doc = document::node_to_json(&document::load(source).map_err(fail)?);
        Ok(Self::of(&doc, &policy))
    }

    /// A document as JSON and the policy it compiles to.
    fn of(doc: &Value, policy: &Policy) -> Self {
        let mut settings = sorted(doc);
        let rules = match settings.as_object_mut().and_then(|top| top.remove("rules")) {
            Some(Value::Array(rules)) => rules,
            _ => Vec::new(),
        };
        // The document's own rules compile first and in order (tier sections and presets come
        // after), so the compiled ids pair with the written rules without re-validating them.
        let ids = policy.rules().iter().map(|r| r.id().clone());
        let rules = ids.zip(rules).collect();
        Self { rules, settings }
    }
}

impl PolicyDiff {
    /// Compares two policy documents. Both must be valid policies; the first that is not
    /// (`from` is checked first) is the error.
    pub fn between(from: &str, to: &str) -> Result<PolicyDiff, DiffError> {
        let from = Document::load(from, DiffSide::From)?;
        let to = Document::load(to, DiffSide::To)?;
        Ok(Self::of(from, to))
    }

    /// The diff of two documents already read (as JSON) and compiled, as the proposal
    /// review has them.
    pub(crate) fn of_documents(
        from_doc: &Value,
        from: &Policy,
        to_doc: &Value,
        to: &Policy,
    ) -> PolicyDiff {
        Self::of(Document::of(from_doc, from), Document::of(to_doc, to))
    }

    fn of(mut from: Document, mut to: Document) -> PolicyDiff {
        key_guidance(&mut from.settings, &mut to.settings);
        let before: HashMap<&RuleId, &Value> = from.rules.iter().map(|(id, v)| (id, v)).collect();
        let after: HashMap<&RuleId, &Value> = to.rules.iter().map(|(id, v)| (id, v)).collect();
        let entry = |(id, value): &(RuleId, Value)| RuleEntry {
            id: id.clone(),
            value: value.clone(),
        };
        let added = to.rules.iter().filter(|(id, _)| !before.contains_key(id));
        let removed = from.rules.iter().filter(|(id, _)| !after.contains_key(id));
        let changed = to.rules.iter().filter_map(|(id, value)| {
            let fields = changes(before.get(id)?, value);
            (!fields.is_empty()).then(|| RuleChange {
                id: id.clone(),
                fields,
            })
        });
        let common = |rules: &[(RuleId, Value)], other: &HashMap<&RuleId, &Value>| {
            let ids = rules
                .iter()
                .map(|(id, _)| id)
                .filter(|id| other.contains_key(id));
            ids.cloned().collect::<Vec<RuleId>>()
        };
        let new_order = common(&to.rules, &before);
        let reordered = if common(&from.rules, &after) == new_order {
            Vec::new()
        } else {
            new_order
        };
        PolicyDiff {
            settings: changes(&from.settings, &to.settings),
            added: added.map(entry).collect(),
            removed: removed.map(entry).collect(),
            changed: changed.collect(),
            reordered,
        }
    }

    /// Whether the documents say the same thing.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.reordered.is_empty()
    }
    /// Changes outside `rules`, in path order. Guidance sections are keyed by name
    /// (`guidance.<name>.content`) when every name is unique on both sides.
    pub fn settings(&self) -> &[FieldChange] {
        &self.settings
    }
    /// Rules only the `to` document has, in its order.
    pub fn rules_added(&self) -> &[RuleEntry] {
        &self.added
    }
    /// Rules only the `from` document has, in its order.
    pub fn rules_removed(&self) -> &[RuleEntry] {
        &self.removed
    }
    /// Rules both documents have but write differently, in the `to` document's order.
    pub fn rules_changed(&self) -> &[RuleChange] {
        &self.changed
    }
    /// The rules both documents have, in the `to` document's order, when that order differs
    /// from the `from` document's; empty otherwise.
    pub fn rules_reordered(&self) -> &[RuleId] {
        &self.reordered
    }
}

impl FieldChange {
    /// The path joined with dots (`approval.quorum`), keys as written, so a key that itself
    /// contains a dot reads ambiguously here; [`FieldChange::segments`] does not.
    pub fn path(&self) -> String {
        self.path.join(".")
    }
    /// The path's keys, from the top of the document or rule.
    pub fn segments(&self) -> &[String] {
        &self.path
    }
    /// The value in the `from` document, `None` when absent.
    pub fn before(&self) -> Option<&Value> {
        self.before.as_ref()
    }
    /// The value in the `to` document, `None` when absent.
    pub fn after(&self) -> Option<&Value> {
        self.after.as_ref()
    }
}

impl RuleEntry {
    /// The rule's id.
    pub fn id(&self) -> &RuleId {
        &self.id
    }
    /// The whole rule as written, `id` included.
    pub fn value(&self) -> &Value {
        &self.value
    }
}

impl RuleChange {
    /// The rule's id.
    pub fn id(&self) -> &RuleId {
        &self.id
    }
    /// The fields that differ, paths relative to the rule, in path order.
    pub fn fields(&self) -> &[FieldChange] {
        &self.fields
    }
}

/// The value with every mapping's keys in sorted order. Whether `serde_json` keeps insertion
/// order depends on the features other crates enable, and the diff's values must print the
/// same in every build.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(key, _)| *key);
            let entries = entries.into_iter().map(|(k, v)| (k.clone(), sorted(v)));
            Value::Object(entries.collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Every difference between two values, in path order.
fn changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    compare(&mut Vec::new(), Some(before), Some(after), &mut out);
    out
}

/// Records every difference between two values under `path`: mappings key by key (in key
/// order, so the output is sorted by path), anything else as a whole. The loader's nesting
/// limit bounds the recursion.
fn compare(
    path: &mut Vec<String>,
    before: Option<&Value>,
    after: Option<&Value>,
    out: &mut Vec<FieldChange>,
) {
    match (before, after) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                path.push(key.clone());
                compare(path, a.get(key), b.get(key), out);
                path.pop();
            }
        }
        _ if before != after => out.push(FieldChange {
            path: path.clone(),
            before: before.cloned(),
            after: after.cloned(),
        }),
        _ => {}
    }
}

/// Turns both documents' `guidance` lists into mappings by section name, so a section is
/// matched by name rather than position. Left as lists unless both sides have one with
/// unique names, since a duplicate name gives a section no identity.
fn key_guidance(from: &mut Value, to: &mut Value) {
    fn keyed(doc: &Value) -> Option<Value> {
        let mut map = Map::new();
        for section in doc.get("guidance")?.as_array()? {
            let name = text(section.get("name")?);
            if map.insert(name, section.clone()).is_some() {
                return None;
            }
        }
        Some(Value::Object(map))
    }
    if let (Some(a), Some(b)) = (keyed(from), keyed(to)) {
        from["guidance"] = a;
        to["guidance"] = b;
    }
}

/// A value as the diff prints it: plain one-line strings bare, anything else compact JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s)
            if !s.is_empty()
                && s.trim() == s
                && s != "(none)"
                && !s.chars().any(char::is_control) =>
        {
            s.clone()
        }
        other => other.to_string(),
    }
}

fn optional(value: Option<&Value>) -> String {
    value.map_or_else(|| "(none)".to_owned(), text)
}

/// A path as the diff prints it; a key that would read as more than one is in backticks.
fn path_text(path: &[String]) -> String {
    let plain = |key: &String| {
        !key.is_empty() && !key.contains(['.', ':', '`']) && !key.chars().any(char::is_whitespace)
    };
    let keys: Vec<String> = path
        .iter()
        .map(|key| {
            if plain(key) {
                key.clone()
            } else {
                format!("`{key}`")
            }
        })
        .collect();
    keys.join(".")
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} → {}",
            path_text(&self.path),
            optional(self.before()),
            optional(self.after())
        )
    }
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut lines: Vec<String> = self.settings.iter().map(|c| c.to_string()).collect();
        for rule in &self.added {
            lines.push(format!("+ rule {}", rule.id));
            // An added rule reads as its fields, in the same order a change lists them.
            let fields = changes(&Value::Object(Map::new()), &rule.value);
            for field in fields.iter().filter(|c| c.path != ["id"]) {
                let value = optional(field.after());
                lines.push(format!("    {}: {value}", path_text(&field.path)));
            }
        }
        lines.extend(self.removed.iter().map(|r| format!("- rule {}", r.id)));
        for rule in &self.changed {
            lines.push(format!("~ rule {}", rule.id));
            lines.extend(rule.fields.iter().map(|c| format!("    {c}")));
        }
        if !self.reordered.is_empty() {
            let ids: Vec<&str> = self.reordered.iter().map(RuleId::as_str).collect();
            lines.push(format!("rules reordered: {}", ids.join(", ")));
        }
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = r#"
version: 1.0.0
default: deny
agents:
  support-bot: {tier: draft}
rules:
  - id: deny-prod
    actions: [deploy.run]
    when: action.target.id == "x"
    effect: require_approval
    approval: {approvers: [ops]}
  - id: old-rule
    actions: [ticket.close]
    effect: deny
  - id: read-tickets
    actions: [ticket.get]
    effect: allow
"#;

    fn diff(from: &str, to: &str) -> PolicyDiff {
        PolicyDiff::between(from, to).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Each change as `path: before → after`, the way a reviewer reads it.
    fn lines(changes: &[FieldChange]) -> Vec<String> {
        changes.iter().map(|c| c.to_string()).collect()
    }

    fn ids<'a>(ids: impl IntoIterator<Item = &'a RuleId>) -> Vec<&'a str> {
        ids.into_iter().map(RuleId::as_str).collect()
    }

    #[test]
    fn identical_documents_have_no_changes() {
        let d = diff(BASE, BASE);
        assert!(d.is_empty());
        assert_eq!(d.to_string(), "no changes");
    }

    #[test]
    fn the_same_policy_written_as_json_has_no_changes() {
        let json = r#"{"version": "1.0.0", "default": "deny",
            "agents": {"support-bot": {"tier": "draft"}},
            "rules": [
              {"id": "deny-prod", "actions": ["deploy.run"], "when": "action.target.id == \"x\"",
               "effect": "require_approval", "approval": {"approvers": ["ops"]}},
              {"id": "old-rule", "actions": ["ticket.close"], "effect": "deny"},
              {"id": "read-tickets", "actions": ["ticket.get"], "effect": "allow"}]}"#;
        assert_eq!(diff(BASE, json), diff(BASE, BASE));
    }

    #[test]
    fn rules_are_matched_by_id_not_position() {
        let to = BASE
            .replace(
                "  - id: old-rule\n    actions: [ticket.close]\n    effect: deny\n",
                "",
            )
            .replace(
                "rules:\n",
                "rules:\n  - {id: allow-refunds, actions: [refund.create], effect: allow}\n",
            );
        let d = diff(BASE, &to);
        assert_eq!(
            ids(d.rules_added().iter().map(RuleEntry::id)),
            ["allow-refunds"]
        );
        assert_eq!(
            d.rules_added()[0].value(),
            &json!({"id": "allow-refunds", "actions": ["refund.create"], "effect": "allow"})
        );
        assert_eq!(
            ids(d.rules_removed().iter().map(RuleEntry::id)),
            ["old-rule"]
        );
        assert_eq!(d.rules_removed()[0].value()["effect"], json!("deny"));
        assert!(d.rules_changed().is_empty() && d.rules_reordered().is_empty());
        assert!(d.settings().is_empty());
    }

    #[test]
    fn a_changed_rule_lists_each_field_down_to_nested_leaves() {
        let to = BASE
            .replace(r#" == "x""#, r#".startsWith("prod-")"#)
            .replace("approvers: [ops]}", "approvers: [ops, sre], quorum: 2}")
            .replace("effect: deny", "effect: allow\n    reason: closing is fine");
        let d = diff(BASE, &to);
        let changed: Vec<(&str, Vec<String>)> = d
            .rules_changed()
            .iter()
            .map(|r| (r.id().as_str(), lines(r.fields())))
            .collect();
        assert_eq!(
            changed,
            [
                (
                    "deny-prod",
                    vec![
                        r#"approval.approvers: ["ops"] → ["ops","sre"]"#.to_owned(),
                        "approval.quorum: (none) → 2".to_owned(),
                        r#"when: action.target.id == "x" → action.target.id.startsWith("prod-")"#
                            .to_owned(),
                    ]
                ),
                (
                    "old-rule",
                    vec![
                        "effect: deny → allow".to_owned(),
                        "reason: (none) → closing is fine".to_owned(),
                    ]
                ),
            ]
        );
        let quorum = &d.rules_changed()[0].fields()[1];
        assert_eq!(quorum.path(), "approval.quorum");
        assert_eq!((quorum.before(), quorum.after()), (None, Some(&json!(2))));
    }

    #[test]
    fn moving_a_rule_is_a_reorder_and_nothing_else() {
        let to = BASE.replace(
            "  - id: old-rule\n    actions: [ticket.close]\n    effect: deny\n",
            "",
        ) + "  - id: old-rule\n    actions: [ticket.close]\n    effect: deny\n";
        let d = diff(BASE, &to);
        assert_eq!(
            ids(d.rules_reordered()),
            ["deny-prod", "read-tickets", "old-rule"]
        );
        assert!(d.rules_added().is_empty() && d.rules_changed().is_empty());
        assert_eq!(
            d.to_string(),
            "rules reordered: deny-prod, read-tickets, old-rule"
        );
    }

    #[test]
    fn adding_or_removing_a_rule_does_not_reorder_the_others() {
        let to = BASE.replace(
            "rules:\n",
            "rules:\n  - {id: first, actions: [x], effect: deny}\n",
        );
        assert!(diff(BASE, &to).rules_reordered().is_empty());
        assert!(diff(&to, BASE).rules_reordered().is_empty());
    }

    #[test]
    fn settings_are_compared_to_their_leaves_in_path_order() {
        let to = BASE
            .replace("version: 1.0.0", "version: 1.1.0")
            .replace(
                "default: deny",
                "default: allow\naudit: {redact: [action.payload.card]}",
            )
            .replace(
                "{tier: draft}",
                "{tier: observe}\n  \"ops.*\": {tier: sandbox}",
            );
        let d = diff(BASE, &to);
        assert_eq!(
            lines(d.settings()),
            [
                "agents.`ops.*`: (none) → {\"tier\":\"sandbox\"}",
                "agents.support-bot.tier: draft → observe",
                "audit: (none) → {\"redact\":[\"action.payload.card\"]}",
                "default: deny → allow",
                "version: 1.0.0 → 1.1.0",
            ]
        );
        // The path as data keeps the key as written; the segments keep it unambiguous.
        assert_eq!(d.settings()[0].path(), "agents.ops.*");
        assert_eq!(d.settings()[0].segments(), ["agents", "ops.*"]);
    }

    #[test]
    fn guidance_sections_are_matched_by_name() {
        let from = format!(
            "{BASE}guidance:\n  - {{name: tone, content: be brief}}\n  - {{name: escalate, content: ask}}\n"
        );
        let to = format!(
            "{BASE}guidance:\n  - {{name: escalate, content: ask a human}}\n  - {{name: scope, content: tickets only}}\n"
        );
        assert_eq!(
            lines(diff(&from, &to).settings()),
            [
                "guidance.escalate.content: ask → ask a human",
                "guidance.scope: (none) → {\"content\":\"tickets only\",\"name\":\"scope\"}",
                "guidance.tone: {\"content\":\"be brief\",\"name\":\"tone\"} → (none)",
            ]
        );
    }

    #[test]
    fn an_invalid_document_is_named_with_its_position() {
        let broken = "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: alow}\n";
        let e = PolicyDiff::between(BASE, broken).unwrap_err();
        assert_eq!(e.side, DiffSide::To);
        let first = e.errors.iter().next().unwrap();
        assert_eq!((first.line, first.column), (3, 35));
        assert!(
            e.to_string()
                .starts_with("the `to` policy does not compile: 3:35: "),
            "{e}"
        );
        let e = PolicyDiff::between(broken, broken).unwrap_err();
        assert_eq!(e.side, DiffSide::From);
    }

    #[test]
    fn a_mixed_diff_reads_as_one_short_text() {
        let to = r#"
version: 1.1.0
default: allow
agents:
  support-bot: {tier: draft}
rules:
  - {id: allow-refunds, actions: [refund.create], effect: allow, scope: {app: billing}}
  - id: read-tickets
    actions: [ticket.get]
    effect: allow
  - id: deny-prod
    actions: [deploy.run]
    when: action.target.id.startsWith("prod-")
    effect: require_approval
    approval: {approvers: [ops], quorum: 2}
"#;
        assert_eq!(
            diff(BASE, to).to_string(),
            r#"default: deny → allow
version: 1.0.0 → 1.1.0
+ rule allow-refunds
    actions: ["refund.create"]
    effect: allow
    scope: {"app":"billing"}
- rule old-rule
~ rule deny-prod
    approval.quorum: (none) → 2
    when: action.target.id == "x" → action.target.id.startsWith("prod-")
rules reordered: read-tickets, deny-prod"#
        );
    }
}
