//! The one definition of the action's fields: what conditions can read, what `audit.keep`
//! and `audit.redact` can name, and which fixed audit columns a redaction masks.
//!
//! The CEL compiler resolves `action.target.id` through this table, the audit view looks the
//! same path up through it, and validation refuses a path it does not know, so a field
//! cannot exist for one of them and be missing (or spelled differently) for another.

use crate::action::Action;
use serde_json::Value;

/// A field of the submitted action (DESIGN §2), as conditions and audit paths name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionField {
    /// `action.type`, the dotted action name.
    Type,
    /// `action.id`, the client's idempotency key.
    Id,
    /// `action.target`, a record of `type` and `id`.
    Target,
    /// `action.target.type`.
    TargetType,
    /// `action.target.id`.
    TargetId,
    /// `action.confidence`.
    Confidence,
    /// `action.mode`.
    Mode,
    /// `action.agent`.
    Agent,
    /// `action.on_behalf_of`.
    OnBehalfOf,
    /// `action.app`.
    App,
    /// `action.workflow`.
    Workflow,
    /// `action.run_id`.
    RunId,
    /// `action.payload`, free JSON.
    Payload,
    /// `action.context`, free JSON; also the variable `context`.
    Context,
    /// `action.usage`, a record of `tokens`, `cost_usd` and `tool_calls`.
    Usage,
    /// `action.usage.tokens`.
    UsageTokens,
    /// `action.usage.cost_usd`.
    UsageCostUsd,
    /// `action.usage.tool_calls`.
    UsageToolCalls,
}

/// What kind of value a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Text,
    Double,
    Int,
    /// A record whose fields are the entries whose parent is this one.
    Record,
    /// Free JSON: any path below it is valid.
    Json,
}

/// A field's value in one action, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FieldValue<'a> {
    Text(&'a str),
    Double(f64),
    Int(i64),
    Json(&'a Value),
}

struct Def {
    field: ActionField,
    name: &'static str,
    path: &'static str,
    parent: Option<ActionField>,
    shape: Shape,
}

const fn def(
    field: ActionField,
    name: &'static str,
    path: &'static str,
    parent: Option<ActionField>,
    shape: Shape,
) -> Def {
    Def {
        field,
        name,
        path,
        parent,
        shape,
    }
}

use ActionField as F;

/// The table. Order is the order fields are listed in messages.
const DEFS: [Def; 18] = [
    def(F::Type, "type", "action.type", None, Shape::Text),
    def(F::Id, "id", "action.id", None, Shape::Text),
    def(F::Target, "target", "action.target", None, Shape::Record),
    def(
        F::TargetType,
        "type",
        "action.target.type",
        Some(F::Target),
        Shape::Text,
    ),
    def(
        F::TargetId,
        "id",
        "action.target.id",
        Some(F::Target),
        Shape::Text,
    ),
    def(
        F::Confidence,
        "confidence",
        "action.confidence",
        None,
        Shape::Double,
    ),
    def(F::Mode, "mode", "action.mode", None, Shape::Text),
    def(F::Agent, "agent", "action.agent", None, Shape::Text),
    def(
        F::OnBehalfOf,
        "on_behalf_of",
        "action.on_behalf_of",
        None,
        Shape::Text,
    ),
    def(F::App, "app", "action.app", None, Shape::Text),
    def(
        F::Workflow,
        "workflow",
        "action.workflow",
        None,
        Shape::Text,
    ),
    def(F::RunId, "run_id", "action.run_id", None, Shape::Text),
    def(F::Payload, "payload", "action.payload", None, Shape::Json),
    def(F::Context, "context", "action.context", None, Shape::Json),
    def(F::Usage, "usage", "action.usage", None, Shape::Record),
    def(
        F::UsageTokens,
        "tokens",
        "action.usage.tokens",
        Some(F::Usage),
        Shape::Int,
    ),
    def(
        F::UsageCostUsd,
        "cost_usd",
        "action.usage.cost_usd",
        Some(F::Usage),
        Shape::Double,
    ),
    def(
        F::UsageToolCalls,
        "tool_calls",
        "action.usage.tool_calls",
        Some(F::Usage),
        Shape::Int,
    ),
];

impl ActionField {
    /// Every field, parents before their children.
    pub const ALL: [ActionField; 18] = [
        F::Type,
        F::Id,
        F::Target,
        F::TargetType,
        F::TargetId,
        F::Confidence,
        F::Mode,
        F::Agent,
        F::OnBehalfOf,
        F::App,
        F::Workflow,
        F::RunId,
        F::Payload,
        F::Context,
        F::Usage,
        F::UsageTokens,
        F::UsageCostUsd,
        F::UsageToolCalls,
    ];

    fn def(self) -> &'static Def {
        // DEFS is in the same order as the enum, which the table test pins.
        &DEFS[self as usize]
    }

    /// The full path, e.g. `action.target.id`.
    pub fn path(self) -> &'static str {
        self.def().path
    }

    /// The canonical spelling of the whole field: `context` for the context (which is also
    /// a variable of its own), the full path for everything else.
    pub(crate) fn canonical(self) -> &'static str {
        match self {
            F::Context => "context",
            other => other.path(),
        }
    }

    /// The record this field belongs to, if it is not directly on the action.
    pub fn parent(self) -> Option<ActionField> {
        self.def().parent
    }

    pub(crate) fn shape(self) -> Shape {
        self.def().shape
    }

    /// The field called `name` directly below `parent` (`None`: directly on the action).
    pub(crate) fn child(parent: Option<ActionField>, name: &str) -> Option<ActionField> {
        DEFS.iter()
            .find(|d| d.parent == parent && d.name == name)
            .map(|d| d.field)
    }

    /// The fields directly below `parent`.
    pub(crate) fn children(parent: Option<ActionField>) -> impl Iterator<Item = ActionField> {
        DEFS.iter()
            .filter(move |d| d.parent == parent)
            .map(|d| d.field)
    }

    /// The field's own name within its record.
    pub(crate) fn name(self) -> &'static str {
        self.def().name
    }

    /// "`type`, `id` and `target`": the names below `parent`, for messages.
    pub(crate) fn listing(parent: Option<ActionField>) -> String {
        let names: Vec<String> = Self::children(parent)
            .map(|f| format!("`{}`", f.name()))
            .collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            Some((last, _)) => last.clone(),
            None => String::new(),
        }
    }

    /// Whether `self` is `other` or lies inside it.
    pub fn is_within(self, other: ActionField) -> bool {
        let mut at = Some(self);
        while let Some(f) = at {
            if f == other {
                return true;
            }
            at = f.parent();
        }
        false
    }

    /// The value of a non-record field, or `None` when the action does not carry it.
    /// JSON fields that hold `null` count as not carried.
    #[inline]
    pub(crate) fn get(self, a: &Action) -> Option<FieldValue<'_>> {
        fn text(s: &Option<String>) -> Option<FieldValue<'_>> {
            s.as_deref().map(FieldValue::Text)
        }
        let target = a.target.as_ref();
        let usage = a.usage.as_ref();
        let count =
            |n: Option<u64>| n.map(|n| FieldValue::Int(i64::try_from(n).unwrap_or(i64::MAX)));
        match self {
            F::Type => Some(FieldValue::Text(a.kind.as_str())),
            F::Id => text(&a.id),
            F::TargetType => target.and_then(|t| text(&t.kind)),
            F::TargetId => target.and_then(|t| text(&t.id)),
            F::Confidence => a.confidence.map(|c| FieldValue::Double(c.get())),
            F::Mode => text(&a.mode),
            F::Agent => text(&a.agent),
            F::OnBehalfOf => text(&a.on_behalf_of),
            F::App => text(&a.app),
            F::Workflow => text(&a.workflow),
            F::RunId => text(&a.run_id),
            F::Payload => (!a.payload.is_null()).then_some(FieldValue::Json(&a.payload)),
            F::Context => (!a.context.is_null()).then_some(FieldValue::Json(&a.context)),
            F::UsageTokens => count(usage.and_then(|u| u.tokens)),
            F::UsageCostUsd => usage.and_then(|u| u.cost_usd).map(FieldValue::Double),
            F::UsageToolCalls => count(usage.and_then(|u| u.tool_calls)),
            F::Target | F::Usage => None,
        }
    }

    /// Whether the action carries the field (for a record: carries the record at all).
    pub(crate) fn present(self, a: &Action) -> bool {
        match self {
            F::Target => a.target.is_some(),
            F::Usage => a.usage.is_some(),
            other => other.get(a).is_some(),
        }
    }

    /// Copies the field (a record with everything in it) from `from` into `to`. A record's
    /// field creates the record in `to` only when `from` carries a value for it, so `to`
    /// carries the field exactly when `from` does. The type is always carried: `to` has one.
    pub(crate) fn copy(self, from: &Action, to: &mut Action) {
        fn record<R: Default, T: Clone>(
            to: &mut Option<R>,
            value: Option<&T>,
            slot: fn(&mut R) -> &mut Option<T>,
        ) {
            if let Some(value) = value {
                *slot(to.get_or_insert_with(R::default)) = Some(value.clone());
            }
        }
        let target = from.target.as_ref();
        let usage = from.usage.as_ref();
        match self {
            F::Type => to.kind.clone_from(&from.kind),
            F::Id => to.id.clone_from(&from.id),
            F::Target => to.target.clone_from(&from.target),
            F::TargetType => record(&mut to.target, target.and_then(|t| t.kind.as_ref()), |t| {
                &mut t.kind
            }),
            F::TargetId => record(&mut to.target, target.and_then(|t| t.id.as_ref()), |t| {
                &mut t.id
            }),
            F::Confidence => to.confidence = from.confidence,
            F::Mode => to.mode.clone_from(&from.mode),
            F::Agent => to.agent.clone_from(&from.agent),
            F::OnBehalfOf => to.on_behalf_of.clone_from(&from.on_behalf_of),
            F::App => to.app.clone_from(&from.app),
            F::Workflow => to.workflow.clone_from(&from.workflow),
            F::RunId => to.run_id.clone_from(&from.run_id),
            F::Payload => to.payload.clone_from(&from.payload),
            F::Context => to.context.clone_from(&from.context),
            F::Usage => to.usage.clone_from(&from.usage),
            F::UsageTokens => record(&mut to.usage, usage.and_then(|u| u.tokens.as_ref()), |u| {
                &mut u.tokens
            }),
            F::UsageCostUsd => record(
                &mut to.usage,
                usage.and_then(|u| u.cost_usd.as_ref()),
                |u| &mut u.cost_usd,
            ),
            F::UsageToolCalls => record(
                &mut to.usage,
                usage.and_then(|u| u.tool_calls.as_ref()),
                |u| &mut u.tool_calls,
            ),
        }
    }
}

/// A path into the action as `audit.keep` / `audit.redact` write it, resolved to one
/// canonical form: `action.context.x` and `context.x` are the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldPath {
    pub field: ActionField,
    /// Steps into a JSON field's value (object keys or list indices).
    pub steps: Vec<String>,
}

impl FieldPath {
    /// Resolves a dotted path; the error says what is wrong in words.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut segments = text.split('.');
        if text.split('.').any(str::is_empty) {
            return Err(format!("audit path `{text}` has an empty segment"));
        }
        let mut field = match segments.next() {
            Some("context") => F::Context,
            Some("action") => {
                let Some(name) = segments.next() else {
                    return Err(format!(
                        "audit path `{text}` must name a field of `action`: {}",
                        ActionField::listing(None)
                    ));
                };
                ActionField::child(None, name).ok_or_else(|| {
                    format!(
                        "audit path `{text}`: `action` has no field `{name}`; it has {}",
                        ActionField::listing(None)
                    )
                })?
            }
            _ => {
                return Err(format!(
                    "audit path `{text}` must be a dotted path under `action.` or `context.`"
                ));
            }
        };
        let mut steps = Vec::new();
        for name in segments {
            match field.shape() {
                Shape::Json => steps.push(name.to_owned()),
                Shape::Record => {
                    field = ActionField::child(Some(field), name).ok_or_else(|| {
                        format!(
                            "audit path `{text}`: `{}` has no field `{name}`; it has {}",
                            field.path(),
                            ActionField::listing(Some(field))
                        )
                    })?;
                }
                Shape::Text | Shape::Double | Shape::Int => {
                    return Err(format!(
                        "audit path `{text}`: `{}` is a single value with no field `{name}`",
                        field.path()
                    ));
                }
            }
        }
        Ok(Self { field, steps })
    }

    /// The canonical spelling: `context.…` for the context, `action.…` for everything else.
    pub(crate) fn canonical(&self) -> String {
        let mut out = String::from(self.field.canonical());
        for step in &self.steps {
            out.push('.');
            out.push_str(step);
        }
        out
    }

    /// Whether masking `self` masks all of `other` (equal, or `other` lies inside it).
    pub(crate) fn covers(&self, other: &FieldPath) -> bool {
        if self.steps.is_empty() {
            return other.field.is_within(self.field);
        }
        self.field == other.field && other.steps.starts_with(&self.steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_enum_order() {
        for (i, f) in ActionField::ALL.iter().enumerate() {
            assert_eq!(DEFS[i].field, *f);
            assert_eq!(*f as usize, i);
        }
    }

    #[test]
    fn audit_paths_resolve_to_one_canonical_form() {
        let table = [
            ("action.context.user", "context.user"),
            ("context.user", "context.user"),
            ("action.context", "context"),
            ("action.target.id", "action.target.id"),
            ("action.payload.card", "action.payload.card"),
            ("action.usage", "action.usage"),
        ];
        for (written, canonical) in table {
            assert_eq!(FieldPath::parse(written).unwrap().canonical(), canonical);
        }
        for (bad, message) in [
            ("action.colour", "`action` has no field `colour`"),
            (
                "action.target.colour",
                "`action.target` has no field `colour`",
            ),
            ("action.type.x", "is a single value"),
            ("payload.card", "under `action.` or `context.`"),
            ("action", "must name a field"),
            ("context..x", "empty segment"),
        ] {
            let err = FieldPath::parse(bad).unwrap_err();
            assert!(err.contains(message), "{bad}: {err}");
        }
    }

    #[test]
    fn coverage_follows_records_and_json_steps() {
        let p = |s: &str| FieldPath::parse(s).unwrap();
        assert!(p("action.target").covers(&p("action.target.id")));
        assert!(p("context.user").covers(&p("action.context.user.email")));
        assert!(!p("context.user.email").covers(&p("context.user")));
        assert!(!p("context.user").covers(&p("context.username")));
    }
}
