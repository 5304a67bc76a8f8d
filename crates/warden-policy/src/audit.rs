//! What the audit log may keep of an action: the `audit.keep` allowlist with `audit.redact`
//! masks applied, and the masks to apply to any other text recorded about it (reasons).
//!
//! The policy decides this, so it lives in the core; the server only stores the result.

use crate::action::Action;
use crate::expr::schema::{ActionField, FieldPath, FieldValue, Shape};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Masked values shorter than this are not searched for in free text: masking every `1` or
/// `no` in a reason would garble it without protecting anything.
const MIN_MASKED_TEXT: usize = 3;

/// What the audit log may keep verbatim and what it must mask: the policy's `audit` section,
/// every path resolved through the action schema to one canonical spelling, so
/// `action.context.user` and `context.user` are the same path and a redaction cannot be
/// bypassed by spelling a kept path differently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSpec {
    keep: Vec<FieldPath>,
    redact: Vec<FieldPath>,
    keep_text: Vec<String>,
    redact_text: Vec<String>,
    /// Bit `f as u32` set when action field `f` is redacted, computed once here.
    redacted: u32,
}

impl AuditSpec {
    /// Resolves `keep` and `redact` paths (`action.target.id`, `context.ticket.priority`).
    /// The error names the first path that is not a field of the action.
    pub fn new<K: AsRef<str>, R: AsRef<str>>(keep: &[K], redact: &[R]) -> Result<Self, String> {
        let mut spec = Self::default();
        for path in keep {
            spec.push_keep(FieldPath::parse(path.as_ref())?);
        }
        for path in redact {
            spec.push_redact(FieldPath::parse(path.as_ref())?);
        }
        Ok(spec)
    }

    pub(crate) fn push_keep(&mut self, path: FieldPath) {
        if !self.keep.contains(&path) {
            self.keep_text.push(path.canonical());
            self.keep.push(path);
        }
    }

    pub(crate) fn push_redact(&mut self, path: FieldPath) {
        if !self.redact.contains(&path) {
            for field in ActionField::ALL {
                if path.covers(&FieldPath {
                    field,
                    steps: Vec::new(),
                }) {
                    self.redacted |= 1 << field as u32;
                }
            }
            self.redact_text.push(path.canonical());
            self.redact.push(path);
        }
    }

    /// The kept paths, canonical (`context.…` for the context, `action.…` otherwise).
    pub fn keep(&self) -> &[String] {
        &self.keep_text
    }

    /// The redacted paths, canonical.
    pub fn redact(&self) -> &[String] {
        &self.redact_text
    }

    /// Whether a redaction masks all of this action field (the field or a record holding it
    /// is redacted), e.g. so the server stores a keyed reference instead of the agent id.
    pub fn is_redacted(&self, field: ActionField) -> bool {
        self.redacted & (1 << field as u32) != 0
    }

    /// Whether the whole value at `path` would hold something redacted: a redaction covers
    /// the path, or lies inside it.
    pub(crate) fn blocks(&self, path: &FieldPath) -> bool {
        self.redacted & (1 << path.field as u32) != 0
            || self.redact.iter().any(|r| r.covers(path) || path.covers(r))
    }

    /// The redacted values of `action` that free text must not show (strings and numbers
    /// of at least `MIN_MASKED_TEXT` characters), longest first, so a value that contains
    /// another is masked whole.
    pub(crate) fn masked_values(&self, action: &Action) -> Vec<String> {
        let mut masks = Vec::new();
        for path in &self.redact {
            if let Some(value) = lookup(action, path) {
                collect_leaves(&value, &mut masks);
            }
        }
        masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
        masks.dedup();
        masks
    }

    /// The kept fields of `action`, and the masks for everything else recorded about it.
    pub fn view(&self, action: &Action) -> AuditView {
        let redacted = self.redacted;
        if self.keep.is_empty() && self.redact.is_empty() {
            return AuditView::default();
        }
        let masks = self.masked_values(action);
        let mut kept = Map::new();
        for (path, key) in self.keep.iter().zip(&self.keep_text) {
            let Some(value) = lookup(action, path) else {
                continue;
            };
            let mut value = value.into_owned();
            for redact in &self.redact {
                if redact.covers(path) {
                    value = Value::String(REDACTED.to_owned());
                } else if path.covers(redact) {
                    mask_inside(&mut value, path, redact);
                }
            }
            kept.insert(key.clone(), value);
        }
        AuditView {
            kept,
            masks,
            redacted,
        }
    }
}

/// The part of an action the audit log may keep.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditView {
    /// Each kept path that is present in the action, with redactions applied, keyed by the
    /// path's canonical spelling (`"action.target.id": "T-1042"`, `"context.user": {…}`).
    pub kept: Map<String, Value>,
    masks: Vec<String>,
    /// Bit `f as u32` set when action field `f` is redacted.
    redacted: u32,
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

    /// Whether the policy redacts this action field, so a fixed audit column holding it
    /// (agent, on_behalf_of, target type and id, mode, app, workflow, run_id, …) must not
    /// store the value verbatim.
    pub fn is_redacted(&self, field: ActionField) -> bool {
        self.redacted & (1 << field as u32) != 0
    }
}

/// Masks, inside `value` (the value at `kept`), the part at `redact`, which lies inside it.
fn mask_inside(value: &mut Value, kept: &FieldPath, redact: &FieldPath) {
    let mut rest: Vec<&str> = Vec::new();
    // A record field (`action.target.id` under `action.target`) is one key below the record.
    let mut at = Some(redact.field);
    while let Some(f) = at {
        if f == kept.field {
            break;
        }
        rest.insert(0, f.name());
        at = f.parent();
    }
    rest.extend(
        redact.steps[kept.steps.len().min(redact.steps.len())..]
            .iter()
            .map(String::as_str),
    );
    mask_path(value, &rest);
}

/// The value at an audit path, borrowed where the action holds JSON, so a lookup never
/// copies the payload.
fn lookup<'a>(action: &'a Action, path: &FieldPath) -> Option<Cow<'a, Value>> {
    let root: Cow<'a, Value> = field_json(action, path.field)?;
    let found = match root {
        Cow::Borrowed(mut at) => {
            for step in &path.steps {
                at = child(at, step)?;
            }
            Cow::Borrowed(at)
        }
        Cow::Owned(value) => {
            let mut at = &value;
            for step in &path.steps {
                at = child(at, step)?;
            }
            Cow::Owned(at.clone())
        }
    };
    (!found.is_null()).then_some(found)
}

/// A field's value as JSON; records are built from their present fields.
fn field_json(action: &Action, field: ActionField) -> Option<Cow<'_, Value>> {
    if field.shape() == Shape::Record {
        if !field.present(action) {
            return None;
        }
        let mut map = Map::new();
        for f in ActionField::children(Some(field)) {
            if let Some(v) = field_json(action, f) {
                map.insert(f.name().to_owned(), v.into_owned());
            }
        }
        return Some(Cow::Owned(Value::Object(map)));
    }
    Some(match field.get(action)? {
        FieldValue::Json(v) => Cow::Borrowed(v),
        FieldValue::Text(s) => Cow::Owned(Value::String(s.to_owned())),
        FieldValue::Double(d) => Cow::Owned(Value::from(d)),
        FieldValue::Int(i) => Cow::Owned(Value::from(i)),
    })
}

fn child<'v>(value: &'v Value, step: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(step),
        Value::Array(items) => items.get(step.parse::<usize>().ok()?),
        _ => None,
    }
}

fn mask_path(value: &mut Value, path: &[&str]) {
    let Some((head, rest)) = path.split_first() else {
        *value = Value::String(REDACTED.to_owned());
        return;
    };
    let child = match value {
        Value::Object(map) => map.get_mut(*head),
        Value::Array(items) => head.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    };
    if let Some(child) = child {
        mask_path(child, rest);
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
        AuditSpec::new(keep, redact).unwrap()
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

    /// Regression (issue 8, item 4): `action.context` is an alias of `context`, and paths
    /// were matched as text, so keeping `action.context.user` stored the redacted email.
    #[test]
    fn a_redaction_holds_however_the_kept_path_is_spelled() {
        for keep in ["action.context.user", "context.user", "action.context"] {
            for redact in ["context.user.email", "action.context.user.email"] {
                let view = spec(&[keep], &[redact]).view(&action());
                let text = Value::Object(view.kept.clone()).to_string();
                assert!(
                    !text.contains("ann@example.com"),
                    "{keep} / {redact}: {text}"
                );
                assert!(text.contains(REDACTED), "{keep} / {redact}: {text}");
            }
        }
        let view = spec(&["action.target"], &["action.target.id"]).view(&action());
        assert_eq!(
            Value::Object(view.kept),
            json!({"action.target": {"type": "ticket", "id": REDACTED}})
        );
        // Both spellings are one path, kept once under the canonical key.
        let view = spec(&["action.context.ticket", "context.ticket"], &[]).view(&action());
        assert_eq!(view.kept.keys().collect::<Vec<_>>(), ["context.ticket"]);
    }

    #[test]
    fn redacted_fixed_columns_are_reported() {
        let view = spec(&[], &["action.agent", "action.target"]).view(&action());
        for (field, redacted) in [
            (ActionField::Agent, true),
            (ActionField::Target, true),
            (ActionField::TargetId, true),
            (ActionField::TargetType, true),
            (ActionField::OnBehalfOf, false),
            (ActionField::Mode, false),
        ] {
            assert_eq!(view.is_redacted(field), redacted, "{field:?}");
        }
        assert!(
            !AuditSpec::default()
                .view(&action())
                .is_redacted(ActionField::Agent)
        );
    }
}
