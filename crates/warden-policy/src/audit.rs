//! What the audit log may keep of an action: the `audit.keep` allowlist with `audit.redact`
//! masks applied, and the masks to apply to any other text recorded about it (reasons).
//!
//! The policy decides this, so it lives in the core; the server only stores the result.

use crate::action::Action;
use crate::policy::AuditSpec;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Masked values shorter than this are not searched for in free text: masking every `1` or
/// `no` in a reason would garble it without protecting anything.
const MIN_MASKED_TEXT: usize = 3;

/// The part of an action the audit log may keep.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditView {
    /// Each kept path that is present in the action, with redactions applied, keyed by the
    /// path as written in the policy (`"action.target.id": "T-1042"`).
    pub kept: Map<String, Value>,
    masks: Vec<String>,
}

impl AuditView {
    /// `text` with every redacted value masked.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.masks {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }

    /// Whether any value must be masked in free text.
    pub fn has_masks(&self) -> bool {
        !self.masks.is_empty()
    }
}

impl AuditSpec {
    /// The kept fields of `action`, and the masks for everything else recorded about it.
    pub fn view(&self, action: &Action) -> AuditView {
        if self.keep.is_empty() && self.redact.is_empty() {
            return AuditView::default();
        }
        let mut masks = Vec::new();
        for path in &self.redact {
            if let Some(value) = lookup(action, path) {
                collect_leaves(&value, &mut masks);
            }
        }
        // Longest first, so a value that contains another is masked whole.
        masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
        masks.dedup();

        let mut kept = Map::new();
        for path in &self.keep {
            let Some(value) = lookup(action, path) else {
                continue;
            };
            let mut value = value.into_owned();
            for redact in &self.redact {
                if covers(redact, path) {
                    value = Value::String(REDACTED.to_owned());
                } else if let Some(rest) = redact
                    .strip_prefix(path.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                {
                    mask_path(&mut value, rest);
                }
            }
            kept.insert(path.clone(), value);
        }
        AuditView { kept, masks }
    }
}

/// Whether masking `redact` masks all of `path`.
fn covers(redact: &str, path: &str) -> bool {
    path == redact
        || path
            .strip_prefix(redact)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The value at a dotted audit path (`action.target.id`, `context.ticket.priority`),
/// borrowed where the action holds JSON, so a lookup never copies the payload.
fn lookup<'a>(action: &'a Action, path: &str) -> Option<Cow<'a, Value>> {
    let mut segments = path.split('.');
    let (root, rest): (Cow<'a, Value>, _) = match (segments.next()?, segments.next()) {
        ("context", Some(first)) => (Cow::Borrowed(&action.context), Some(first)),
        ("action", Some(field)) => {
            let owned = |v: Option<Value>| v.map(Cow::Owned);
            let text = |v: &Option<String>| owned(v.clone().map(Value::String));
            let value = match field {
                "payload" => Some(Cow::Borrowed(&action.payload)),
                "context" => Some(Cow::Borrowed(&action.context)),
                "id" => text(&action.id),
                "type" => owned(Some(Value::String(action.kind.as_str().to_owned()))),
                "target" => owned(action.target.as_ref().map(|t| {
                    let mut m = Map::new();
                    if let Some(kind) = &t.kind {
                        m.insert("type".into(), Value::String(kind.clone()));
                    }
                    if let Some(id) = &t.id {
                        m.insert("id".into(), Value::String(id.clone()));
                    }
                    Value::Object(m)
                })),
                "confidence" => owned(action.confidence.map(|c| Value::from(c.get()))),
                "mode" => text(&action.mode),
                "agent" => text(&action.agent),
                "on_behalf_of" => text(&action.on_behalf_of),
                "app" => text(&action.app),
                "workflow" => text(&action.workflow),
                "run_id" => text(&action.run_id),
                "usage" => owned(action.usage.as_ref().map(|u| {
                    let mut m = Map::new();
                    if let Some(t) = u.tokens {
                        m.insert("tokens".into(), Value::from(t));
                    }
                    if let Some(c) = u.cost_usd {
                        m.insert("cost_usd".into(), Value::from(c));
                    }
                    if let Some(t) = u.tool_calls {
                        m.insert("tool_calls".into(), Value::from(t));
                    }
                    Value::Object(m)
                })),
                _ => None,
            }?;
            (value, None)
        }
        _ => return None,
    };
    let mut steps: Vec<&str> = rest.into_iter().collect();
    steps.extend(segments);
    let found = match root {
        Cow::Borrowed(mut at) => {
            for step in steps {
                at = child(at, step)?;
            }
            Cow::Borrowed(at)
        }
        Cow::Owned(value) => {
            let mut at = &value;
            for step in steps {
                at = child(at, step)?;
            }
            Cow::Owned(at.clone())
        }
    };
    (!found.is_null()).then_some(found)
}

fn child<'v>(value: &'v Value, step: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(step),
        Value::Array(items) => items.get(step.parse::<usize>().ok()?),
        _ => None,
    }
}

fn mask_path(value: &mut Value, path: &str) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let child = match value {
        Value::Object(map) => map.get_mut(head),
        Value::Array(items) => head.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    };
    if let Some(child) = child {
        match rest {
            None => *child = Value::String(REDACTED.to_owned()),
            Some(rest) => mask_path(child, rest),
        }
    }
}

fn collect_leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.chars().count() >= MIN_MASKED_TEXT => out.push(s.clone()),
        Value::Number(n) => {
            let text = n.to_string();
            if text.len() >= MIN_MASKED_TEXT {
                out.push(text);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_leaves(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(keep: &[&str], redact: &[&str]) -> AuditSpec {
        AuditSpec {
            keep: keep.iter().map(|s| s.to_string()).collect(),
            redact: redact.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn action() -> Action {
        Action::from_value(json!({
            "type": "ticket.resolve",
            "target": {"type": "ticket", "id": "T-1042"},
            "payload": {"card": "4111 1111 1111 1111"},
            "context": {"user": {"email": "ann@example.com", "role": "agent"},
                        "ticket": {"priority": "high"}}
        }))
        .unwrap()
    }

    #[test]
    fn only_listed_paths_are_kept_and_missing_ones_are_skipped() {
        let view = spec(
            &[
                "action.target.id",
                "context.ticket.priority",
                "context.nope",
            ],
            &[],
        )
        .view(&action());
        assert_eq!(
            Value::Object(view.kept),
            json!({"action.target.id": "T-1042", "context.ticket.priority": "high"})
        );
    }

    #[test]
    fn redaction_masks_kept_values_inside_and_whole() {
        let view = spec(
            &["context.user", "action.payload.card"],
            &["context.user.email", "action.payload"],
        )
        .view(&action());
        assert_eq!(
            Value::Object(view.kept),
            json!({"context.user": {"email": REDACTED, "role": "agent"},
                   "action.payload.card": REDACTED})
        );
    }

    #[test]
    fn masks_apply_to_free_text() {
        let view = spec(&[], &["context.user.email", "action.payload"]).view(&action());
        assert_eq!(
            view.mask("mail ann@example.com about 4111 1111 1111 1111"),
            format!("mail {REDACTED} about {REDACTED}")
        );
        assert!(!AuditSpec::default().view(&action()).has_masks());
    }
}
