//! Applying a proposal's operations to the live document.
//!
//! The document is edited as JSON (the shape `Policy::parse` accepts), so every operation,
//! including an RFC 6902 patch, sees exactly the fields a policy author writes; the result is
//! parsed and compiled like any published policy. A candidate that does not raise the version
//! gets the next patch version, so applying it is always a publish.

use super::ReviewError;
use crate::document;
use crate::policy::{Policy, Version};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One operation of a proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Appends a rule.
    AddRule {
        /// The rule, in the document's shape.
        rule: Value,
    },
    /// Removes the rule with this id.
    RemoveRule {
        /// Its id.
        id: String,
    },
    /// Replaces the rule with the same id.
    ReplaceRule {
        /// The new rule.
        rule: Value,
    },
    /// Sets a top-level field (`default`, `agents`, `budgets`, …).
    Set {
        /// The field's name.
        path: String,
        /// Its new value.
        value: Value,
    },
    /// Replaces the whole document.
    ReplacePolicy {
        /// The new document, as an object or as YAML/JSON source text.
        policy: Value,
    },
    /// RFC 6902 operations on the document.
    JsonPatch {
        /// The operations.
        patch: json_patch::Patch,
    },
}

impl Change {
    /// The operation's name.
    pub fn op(&self) -> &'static str {
        match self {
            Change::AddRule { .. } => "add_rule",
            Change::RemoveRule { .. } => "remove_rule",
            Change::ReplaceRule { .. } => "replace_rule",
            Change::Set { .. } => "set",
            Change::ReplacePolicy { .. } => "replace_policy",
            Change::JsonPatch { .. } => "json_patch",
        }
    }
}

/// The live document as JSON.
pub(super) fn document(source: &str) -> Result<Value, ReviewError> {
    // A source this review wrote (every applied proposal's) is JSON, which reads much faster
    // than through the YAML loader and means the same.
    if source.trim_start().starts_with('{')
        && let Ok(doc) = crate::json::parse_strict(source.as_bytes())
    {
        return Ok(doc);
    }
    let node = document::load(source).map_err(ReviewError::Invalid)?;
    Ok(document::node_to_json(&node))
}

/// Applies `changes` in order to `doc`; `first` is the index of `changes[0]` in the proposal,
/// for messages.
pub(super) fn apply(doc: &mut Value, changes: &[Change], first: usize) -> Result<(), ReviewError> {
    for (i, change) in changes.iter().enumerate() {
        apply_one(doc, change).map_err(|message| ReviewError::Change {
            index: first + i,
            message,
        })?;
    }
    Ok(())
}

fn apply_one(doc: &mut Value, change: &Change) -> Result<(), String> {
    match change {
        Change::AddRule { rule } => {
            let id = rule_id(rule)?;
            let rules = rules_mut(doc)?;
            if rules
                .iter()
                .any(|r| r.get("id").and_then(Value::as_str) == Some(id))
            {
                return Err(format!(
                    "the policy already has a rule `{id}`; use replace_rule"
                ));
            }
            rules.push(rule.clone());
        }
        Change::RemoveRule { id } => {
            let rules = rules_mut(doc)?;
            let before = rules.len();
            rules.retain(|r| r.get("id").and_then(Value::as_str) != Some(id.as_str()));
            if rules.len() == before {
                return Err(format!("the policy has no rule `{id}`"));
            }
        }
        Change::ReplaceRule { rule } => {
            let id = rule_id(rule)?;
            let rules = rules_mut(doc)?;
            let slot = rules
                .iter_mut()
                .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
                .ok_or_else(|| format!("the policy has no rule `{id}`; use add_rule"))?;
            *slot = rule.clone();
        }
        Change::Set { path, value } => {
            if path.is_empty() || path.contains(['.', '/']) {
                return Err(format!(
                    "`{path}` is not a top-level field; use json_patch for a nested one"
                ));
            }
            top_mut(doc)?.insert(path.clone(), value.clone());
        }
        Change::ReplacePolicy { policy } => {
            *doc = match policy {
                Value::Object(_) => policy.clone(),
                Value::String(source) => document(source).map_err(|e| e.to_string())?,
                _ => return Err("`policy` must be a document object or its source text".into()),
            };
        }
        Change::JsonPatch { patch } => {
            json_patch::patch(doc, patch).map_err(|e| format!("the JSON patch fails: {e}"))?;
        }
    }
    if !doc.is_object() {
        return Err("the document must stay an object".into());
    }
    Ok(())
}

fn rule_id(rule: &Value) -> Result<&str, String> {
    rule.get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| "a rule needs a string `id`".to_owned())
}

fn top_mut(doc: &mut Value) -> Result<&mut Map<String, Value>, String> {
    doc.as_object_mut()
        .ok_or_else(|| "the document must be an object".to_owned())
}

fn rules_mut(doc: &mut Value) -> Result<&mut Vec<Value>, String> {
    let top = top_mut(doc)?;
    match top
        .entry("rules")
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(rules) => Ok(rules),
        _ => Err("`rules` must be a list".into()),
    }
}

/// Gives `doc` a version newer than `live` when it does not have one, and compiles it.
/// Returns the source to publish, the document as published and the compiled candidate.
pub(super) fn finish(
    mut doc: Value,
    like: &Policy,
) -> Result<(String, Value, Policy), ReviewError> {
    let live = like.version();
    let newer = doc
        .get("version")
        .and_then(Value::as_str)
        .and_then(Version::parse)
        .is_some_and(|v| v.parts() > live.parts());
    if !newer && let Some(top) = doc.as_object_mut() {
        let (major, minor, patch) = live.parts();
        top.insert(
            "version".into(),
            Value::String(format!("{major}.{minor}.{}", patch + 1)),
        );
    }
    let mut source = serde_json::to_string_pretty(&doc).unwrap_or_default();
    source.push('\n');
    // Compiled from the value; only a candidate that fails is parsed from its text, for
    // errors with positions in the source the agent is shown.
    let policy = match Policy::from_document(&doc, Some(like)) {
        Ok(policy) => policy,
        Err(_) => Policy::parse_like(&source, like).map_err(ReviewError::Invalid)?,
    };
    Ok((source, doc, policy))
}
