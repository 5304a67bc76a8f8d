//! The action an agent proposes (DESIGN §2) and the environment it is evaluated in.
//!
//! Parsing validates every field once, at the edge, so the evaluator never sees an action
//! type that is not a dotted name or a confidence outside [0, 1].

use serde_json::Value;
use std::fmt;

use crate::expr::schema::ActionField;
use crate::json::JsonError;
pub use crate::json::MAX_DEPTH;

/// Why an action was refused before evaluation. Each message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// The body is not JSON of the right shape.
    #[error("{0}")]
    Json(String),
    /// A field has a value outside its domain.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// The field, as a dotted path.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The document nests deeper than [`MAX_DEPTH`].
    #[error("JSON nesting is deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// An object repeats a key: parsers disagree on which one counts, so none does.
    #[error("duplicate key at `{path}`: each key may appear once per object")]
    DuplicateKey {
        /// Where, as a dotted path with `[i]` for array items (`context.user.role`).
        path: String,
    },
}

impl From<JsonError> for ActionError {
    fn from(e: JsonError) -> Self {
        match e {
            JsonError::Syntax(message) => ActionError::Json(message),
            JsonError::TooDeep => ActionError::TooDeep,
            JsonError::DuplicateKey { path } => ActionError::DuplicateKey { path },
        }
    }
}

impl ActionError {
    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ActionError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A confidence score, always within [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Confidence(f64);

impl Confidence {
    /// Accepts a finite value within [0, 1].
    pub fn new(value: f64) -> Option<Self> {
        (value.is_finite() && (0.0..=1.0).contains(&value)).then_some(Self(value))
    }

    /// Clamps any finite value into [0, 1]; NaN becomes 0.
    pub fn clamped(value: f64) -> Self {
        if value.is_nan() {
            Self(0.0)
        } else {
            Self(value.clamp(0.0, 1.0))
        }
    }

    /// The score.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// A dotted action name such as `ticket.resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActionType(String);

impl ActionType {
    /// Accepts one or more segments of `[A-Za-z0-9_-]` joined by dots, at most 200 bytes.
    pub fn new(name: &str) -> Result<Self, String> {
        Self::check(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The same check as [`ActionType::new`], keeping the string it is given.
    fn from_string(name: String) -> Result<Self, String> {
        Self::check(&name)?;
        Ok(Self(name))
    }

    fn check(name: &str) -> Result<(), String> {
        if name.is_empty() {
            return Err("must not be empty".into());
        }
        if name.len() > 200 {
            return Err("is longer than 200 characters".into());
        }
        let ok_segment = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name.split('.').all(ok_segment) {
            return Err(format!(
                "`{name}` is not a dotted name (letters, digits, `_` and `-`, separated by dots)"
            ));
        }
        Ok(())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the action is done to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    /// The kind of object, e.g. `ticket`.
    pub kind: Option<String>,
    /// Its identifier, e.g. `T-1042`.
    pub id: Option<String>,
}

/// Resources the action consumes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Model tokens.
    pub tokens: Option<u64>,
    /// Money spent, in US dollars.
    pub cost_usd: Option<f64>,
    /// Tool invocations.
    pub tool_calls: Option<u64>,
}

/// An action as submitted by the execution controller. Build one with [`Action::from_json`] or
/// [`Action::from_value`]; both validate every field.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Client-chosen idempotency key.
    pub id: Option<String>,
    /// The dotted action name.
    pub kind: ActionType,
    /// What it acts on.
    pub target: Option<Target>,
    /// The agent's own confidence.
    pub confidence: Option<Confidence>,
    /// Execution mode, e.g. `auto` or `draft`.
    pub mode: Option<String>,
    /// The agent id (the server overrides it with the key's agent).
    pub agent: Option<String>,
    /// The human the agent acts for.
    pub on_behalf_of: Option<String>,
    /// The application the agent runs in.
    pub app: Option<String>,
    /// The workflow within the app.
    pub workflow: Option<String>,
    /// The agent run this action belongs to.
    pub run_id: Option<String>,
    /// The action's arguments; readable by rules, never stored verbatim.
    pub payload: Value,
    /// Facts about the world; readable by rules, never stored verbatim.
    pub context: Value,
    /// Resources consumed.
    pub usage: Option<Usage>,
}

impl Action {
    /// An action of the given type with every optional field empty.
    pub fn new(kind: ActionType) -> Self {
        Self {
            id: None,
            kind,
            target: None,
            confidence: None,
            mode: None,
            agent: None,
            on_behalf_of: None,
            app: None,
            workflow: None,
            run_id: None,
            payload: Value::Null,
            context: Value::Null,
            usage: None,
        }
    }

    /// Parses and validates an action from JSON bytes. Invalid UTF-8, nesting deeper than
    /// [`MAX_DEPTH`], a key repeated in any object, unknown fields and out-of-range values
    /// are refused.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ActionError> {
        Self::from_value(crate::json::parse_strict(bytes)?)
    }

    /// Validates an action given as a JSON value (e.g. from a YAML test case).
    pub fn from_value(value: Value) -> Result<Self, ActionError> {
        if value_depth(&value) > MAX_DEPTH {
            return Err(ActionError::TooDeep);
        }
        let Value::Object(mut fields) = value else {
            return Err(ActionError::Json(format!(
                "an action is a JSON object, not {}",
                type_name(&value)
            )));
        };
        if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ActionError::Json(format!(
                "unknown field `{}`; an action has {}",
                unknown.escape_debug(),
                FIELDS.map(|f| format!("`{f}`")).join(", ")
            )));
        }
        let mut take = |name: &str| fields.remove(name).filter(|v| !v.is_null());
        let kind = match take("type") {
            Some(v) => action_type(v)?,
            None => return Err(ActionError::Json("missing field `type`".into())),
        };
        let confidence = confidence(take("confidence"))?;
        let target = target(take("target"))?;
        let usage = usage(take("usage"))?;
        Ok(Self {
            id: text(take("id"), "id", Text::Reference)?,
            kind,
            target,
            confidence,
            mode: text(take("mode"), "mode", Text::Mode)?,
            agent: text(take("agent"), "agent", Text::Identifier)?,
            on_behalf_of: text(take("on_behalf_of"), "on_behalf_of", Text::Identifier)?,
            app: text(take("app"), "app", Text::Identifier)?,
            workflow: text(take("workflow"), "workflow", Text::Identifier)?,
            run_id: text(take("run_id"), "run_id", Text::Identifier)?,
            payload: object(take("payload"), "payload")?,
            context: object(take("context"), "context")?,
            usage,
        })
    }

    /// An action of the type given as JSON, checked as [`Action::from_value`] checks it.
    pub(crate) fn of_type(value: Value) -> Result<Self, ActionError> {
        Ok(Self::new(action_type(value)?))
    }

    /// Sets one field (a record's field creates the record), checked as
    /// [`Action::from_value`] checks it; `null` clears it. For the snapshot reader, which
    /// holds an action's fields one by one.
    pub(crate) fn set(&mut self, field: ActionField, value: Value) -> Result<(), ActionError> {
        use ActionField as F;
        let value = Some(value).filter(|v| !v.is_null());
        match field {
            F::Type => match value {
                Some(v) => self.kind = action_type(v)?,
                None => return Err(ActionError::Json("missing field `type`".into())),
            },
            F::Id => self.id = text(value, "id", Text::Reference)?,
            F::Target => self.target = target(value)?,
            F::TargetType => {
                let kind = text(value, "target.type", Text::Identifier)?;
                self.target.get_or_insert_with(Target::default).kind = kind;
            }
            F::TargetId => {
                let id = text(value, "target.id", Text::Reference)?;
                self.target.get_or_insert_with(Target::default).id = id;
            }
            F::Confidence => self.confidence = confidence(value)?,
            F::Mode => self.mode = text(value, "mode", Text::Mode)?,
            F::Agent => self.agent = text(value, "agent", Text::Identifier)?,
            F::OnBehalfOf => {
                self.on_behalf_of = text(value, "on_behalf_of", Text::Identifier)?;
            }
            F::App => self.app = text(value, "app", Text::Identifier)?,
            F::Workflow => self.workflow = text(value, "workflow", Text::Identifier)?,
            F::RunId => self.run_id = text(value, "run_id", Text::Identifier)?,
            F::Payload | F::Context => {
                // The action's own object counts as one level.
                if value.as_ref().is_some_and(|v| value_depth(v) >= MAX_DEPTH) {
                    return Err(ActionError::TooDeep);
                }
                let (slot, name) = match field {
                    F::Payload => (&mut self.payload, "payload"),
                    _ => (&mut self.context, "context"),
                };
                *slot = object(value, name)?;
            }
            F::Usage => self.usage = usage(value)?,
            F::UsageTokens => {
                let tokens = count(value, "usage.tokens")?;
                self.usage.get_or_insert_with(Usage::default).tokens = tokens;
            }
            F::UsageCostUsd => {
                let cost_usd = cost(value)?;
                self.usage.get_or_insert_with(Usage::default).cost_usd = cost_usd;
            }
            F::UsageToolCalls => {
                let tool_calls = count(value, "usage.tool_calls")?;
                self.usage.get_or_insert_with(Usage::default).tool_calls = tool_calls;
            }
        }
        Ok(())
    }
}

fn action_type(value: Value) -> Result<ActionType, ActionError> {
    match value {
        Value::String(name) => {
            ActionType::from_string(name).map_err(|message| ActionError::Invalid {
                field: "type",
                message,
            })
        }
        other => Err(wrong_type("type", "a string", &other)),
    }
}

fn confidence(value: Option<Value>) -> Result<Option<Confidence>, ActionError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let c = n.as_f64().unwrap_or(f64::NAN);
            Ok(Some(Confidence::new(c).ok_or_else(|| {
                ActionError::Invalid {
                    field: "confidence",
                    message: format!("{n} is outside [0, 1]"),
                }
            })?))
        }
        Some(other) => Err(wrong_type("confidence", "a number", &other)),
    }
}

fn target(value: Option<Value>) -> Result<Option<Target>, ActionError> {
    match value {
        None => Ok(None),
        Some(Value::Object(mut t)) => {
            if let Some(unknown) = t.keys().find(|k| *k != "type" && *k != "id") {
                return Err(ActionError::Json(format!(
                    "unknown field `{}` in `target`; a target has `type` and `id`",
                    unknown.escape_debug()
                )));
            }
            Ok(Some(Target {
                kind: text(t.remove("type"), "target.type", Text::Identifier)?,
                id: text(t.remove("id"), "target.id", Text::Reference)?,
            }))
        }
        Some(other) => Err(wrong_type("target", "an object", &other)),
    }
}

fn usage(value: Option<Value>) -> Result<Option<Usage>, ActionError> {
    match value {
        None => Ok(None),
        Some(Value::Object(mut u)) => {
            if let Some(unknown) = u
                .keys()
                .find(|k| !["tokens", "cost_usd", "tool_calls"].contains(&k.as_str()))
            {
                return Err(ActionError::Json(format!(
                    "unknown field `{}` in `usage`; usage has `tokens`, `cost_usd` and \
                     `tool_calls`",
                    unknown.escape_debug()
                )));
            }
            let cost_usd = cost(u.remove("cost_usd"))?;
            Ok(Some(Usage {
                tokens: count(u.remove("tokens"), "usage.tokens")?,
                cost_usd,
                tool_calls: count(u.remove("tool_calls"), "usage.tool_calls")?,
            }))
        }
        Some(other) => Err(wrong_type("usage", "an object", &other)),
    }
}

fn cost(value: Option<Value>) -> Result<Option<f64>, ActionError> {
    match value.filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(c) if c.is_finite() && c >= 0.0 => Ok(Some(c)),
            _ => Err(ActionError::Invalid {
                field: "usage.cost_usd",
                message: format!("{n} is not a non-negative amount"),
            }),
        },
        Some(other) => Err(wrong_type("usage.cost_usd", "a number", &other)),
    }
}

fn object(value: Option<Value>, field: &'static str) -> Result<Value, ActionError> {
    match value {
        None => Ok(Value::Null),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(other) => Err(wrong_type(field, "an object", &other)),
    }
}

/// Every field of an action, as submitted.
const FIELDS: [&str; 13] = [
    "id",
    "type",
    "target",
    "confidence",
    "mode",
    "agent",
    "on_behalf_of",
    "app",
    "workflow",
    "run_id",
    "payload",
    "context",
    "usage",
];

/// The longest identifier (`agent`, `on_behalf_of`, `app`, `workflow`, `run_id`,
/// `target.type`), in characters.
pub const MAX_IDENTIFIER: usize = 200;

/// The longest `id` or `target.id`, in characters.
pub const MAX_REFERENCE: usize = 512;

/// The longest `mode`, in characters.
pub const MAX_MODE: usize = 64;

/// What a string field may hold.
#[derive(Clone, Copy)]
enum Text {
    /// Names matched by policy and shown in the audit log.
    Identifier,
    /// Ids chosen by callers (idempotency keys, target ids).
    Reference,
    /// An execution mode such as `auto` or `draft`.
    Mode,
}

impl Text {
    fn max(self) -> usize {
        match self {
            Text::Identifier => MAX_IDENTIFIER,
            Text::Reference => MAX_REFERENCE,
            Text::Mode => MAX_MODE,
        }
    }
}

/// A string field: present, non-empty, within its length, and printable. Control and
/// invisible formatting characters are refused in every string field that the audit log
/// shows: a newline in an agent name forged a line in `warden audit tail`, and bidi
/// overrides can make a log line read differently from what it holds.
fn text(
    value: Option<Value>,
    field: &'static str,
    kind: Text,
) -> Result<Option<String>, ActionError> {
    let value = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(other) => return Err(wrong_type(field, "a string", &other)),
    };
    let invalid = |message: String| ActionError::Invalid { field, message };
    if value.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if value.chars().count() > kind.max() {
        return Err(invalid(format!("is longer than {} characters", kind.max())));
    }
    if let Some(c) = value.chars().find(|c| !printable(*c)) {
        return Err(invalid(format!(
            "holds the non-printable character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(Some(value))
}

/// Whether `c` may appear in a field the audit log shows: not a control character, not an
/// invisible formatting or bidi character, not a line or paragraph separator.
pub fn printable(c: char) -> bool {
    !(c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'))
}

fn count(value: Option<Value>, field: &'static str) -> Result<Option<u64>, ActionError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        // `56.0` is a whole number too, as JSON Schema's `integer` has it.
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..18_446_744_073_709_551_615.0).contains(f))
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| ActionError::Invalid {
                field,
                message: format!("{n} is not a whole number of at least 0"),
            }),
        Some(other) => Err(wrong_type(field, "a whole number", &other)),
    }
}

fn wrong_type(field: &'static str, expected: &str, got: &Value) -> ActionError {
    ActionError::Invalid {
        field,
        message: format!("expected {expected}, got {}", type_name(got)),
    }
}

/// A JSON value's kind in words, for messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How deeply a JSON value nests (a scalar is 0, `{}` is 1).
pub(crate) fn value_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A point in time, as conditions see it in `now` (a CEL timestamp). The core has no clock:
/// the caller reads one and builds this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(jiff::Timestamp);

impl Timestamp {
    /// Seconds since the Unix epoch, UTC; `None` outside CEL's range (years 1 to 9999).
    pub fn from_unix_seconds(seconds: i64) -> Option<Self> {
        Self::from_unix_millis(seconds.checked_mul(1000)?)
    }

    /// Milliseconds since the Unix epoch, UTC; `None` outside CEL's range (years 1 to 9999).
    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        const MIN: i64 = -62_135_596_800_000;
        const MAX: i64 = 253_402_300_799_999;
        if !(MIN..=MAX).contains(&millis) {
            return None;
        }
        jiff::Timestamp::from_millisecond(millis).ok().map(Self)
    }

    /// Parses RFC 3339 text such as `2024-03-01T16:00:00Z`; `None` if it is not one or lies
    /// outside CEL's range.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let t: jiff::Timestamp = text.parse().ok()?;
        // Checked against CEL's range like every other way in.
        Self::from_unix_millis(t.as_millisecond())?;
        Some(Self(t))
    }

    /// Whole seconds since the Unix epoch (the fraction dropped).
    pub fn unix_seconds(self) -> i64 {
        self.0.as_second()
    }

    /// Milliseconds since the Unix epoch (the fraction dropped).
    pub fn unix_millis(self) -> i64 {
        self.0.as_millisecond()
    }

    pub(crate) fn get(self) -> jiff::Timestamp {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the evaluator needs besides the action: who asks and when. The core has no clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    /// The tenant, taken by the server from the API key.
    pub tenant: String,
    /// The time of the decision (`now` in conditions); the Unix epoch by default.
    pub now: Timestamp,
}

impl Env {
    /// The environment for `tenant` at `now`.
    pub fn new(tenant: impl Into<String>, now: Timestamp) -> Self {
        Self {
            tenant: tenant.into(),
            now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_action_parses() {
        let a = Action::from_json(
            br#"{"id":"k1","type":"ticket.resolve","target":{"type":"ticket","id":"T-1"},
                 "confidence":0.82,"mode":"auto","agent":"support-bot","payload":{"x":1},
                 "context":{"user":{"role":"restricted"}},"usage":{"tokens":10,"cost_usd":0.1,"tool_calls":1}}"#,
        )
        .unwrap();
        assert_eq!(a.kind.as_str(), "ticket.resolve");
        assert_eq!(a.confidence.unwrap().get(), 0.82);
        assert_eq!(a.target.unwrap().id.as_deref(), Some("T-1"));
    }

    #[test]
    fn bad_input_names_the_field() {
        let table: [(&[u8], &str); 7] = [
            (
                br#"{"type":"t","confidence":1.5}"#,
                "invalid `confidence`: 1.5 is outside [0, 1]",
            ),
            (
                br#"{"type":"t","confidence":-0.1}"#,
                "invalid `confidence`: -0.1 is outside [0, 1]",
            ),
            (br#"{"type":"not a name"}"#, "invalid `type`"),
            (br#"{"type":"a..b"}"#, "invalid `type`"),
            (br#"{"confidence":0.5}"#, "missing field `type`"),
            (br#"{"type":"t","colour":1}"#, "unknown field `colour`"),
            (
                br#"{"type":"t","usage":{"cost_usd":-1}}"#,
                "invalid `usage.cost_usd`",
            ),
        ];
        for (body, expected) in table {
            let err = Action::from_json(body).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn too_deep_and_not_utf8_are_refused() {
        let deep = format!(
            r#"{{"type":"t","payload":{}1{}}}"#,
            "[".repeat(70),
            "]".repeat(70)
        );
        assert_eq!(
            Action::from_json(deep.as_bytes()),
            Err(ActionError::TooDeep)
        );
        let ok = format!(
            r#"{{"type":"t","payload":{{"x":{}1{}}}}}"#,
            "[".repeat(60),
            "]".repeat(60)
        );
        assert!(Action::from_json(ok.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let text = format!(r#"{{"type":"t","payload":{{"s":"{}"}}}}"#, "[".repeat(100));
        assert!(Action::from_json(text.as_bytes()).is_ok());
        assert!(
            Action::from_json(b"{\"type\":\"t\xff\"}")
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }
}
