//! The action an agent proposes (DESIGN §2) and the environment it is evaluated in.
//!
//! Parsing validates every field once, at the edge, so the evaluator never sees an action
//! type that is not a dotted name or a confidence outside [0, 1].

use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// The deepest JSON nesting an action may have.
pub const MAX_DEPTH: usize = 64;

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
        Ok(Self(name.to_owned()))
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
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The kind of object, e.g. `ticket`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Its identifier, e.g. `T-1042`.
    pub id: Option<String>,
}

/// Resources the action consumes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    target: Option<Target>,
    confidence: Option<f64>,
    mode: Option<String>,
    agent: Option<String>,
    on_behalf_of: Option<String>,
    app: Option<String>,
    workflow: Option<String>,
    run_id: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    context: Value,
    usage: Option<Usage>,
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
    /// [`MAX_DEPTH`], unknown fields and out-of-range values are refused.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ActionError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            ActionError::Json(format!(
                "body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))
        })?;
        // serde_json stops at 128 levels on its own; checking the raw text first keeps a deep
        // document from being built at all.
        if raw_depth(text) > MAX_DEPTH {
            return Err(ActionError::TooDeep);
        }
        // The fast parser first; only a body that fails is parsed again to name the field.
        let raw: RawAction = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let mut de = serde_json::Deserializer::from_str(text);
                return Err(
                    match serde_path_to_error::deserialize::<_, RawAction>(&mut de) {
                        Err(with_path) => path_message(with_path),
                        Ok(_) => ActionError::Json(json_message(&e)),
                    },
                );
            }
        };
        Self::from_raw(raw)
    }

    /// Validates an action given as a JSON value (e.g. from a YAML test case).
    pub fn from_value(value: Value) -> Result<Self, ActionError> {
        if value_depth(&value) > MAX_DEPTH {
            return Err(ActionError::TooDeep);
        }
        let raw: RawAction = serde_path_to_error::deserialize(value).map_err(path_message)?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawAction) -> Result<Self, ActionError> {
        let kind = ActionType::new(&raw.kind).map_err(|message| ActionError::Invalid {
            field: "type",
            message,
        })?;
        let confidence = match raw.confidence {
            None => None,
            Some(c) => Some(Confidence::new(c).ok_or_else(|| ActionError::Invalid {
                field: "confidence",
                message: format!("{c} is outside [0, 1]"),
            })?),
        };
        if let Some(cost) = raw.usage.as_ref().and_then(|u| u.cost_usd)
            && !(cost.is_finite() && cost >= 0.0)
        {
            return Err(ActionError::Invalid {
                field: "usage.cost_usd",
                message: format!("{cost} is not a non-negative amount"),
            });
        }
        Ok(Self {
            id: raw.id,
            kind,
            target: raw.target,
            confidence,
            mode: raw.mode,
            agent: raw.agent,
            on_behalf_of: raw.on_behalf_of,
            app: raw.app,
            workflow: raw.workflow,
            run_id: raw.run_id,
            payload: raw.payload,
            context: raw.context,
            usage: raw.usage,
        })
    }
}

/// A type or shape error, naming the field it is in (`at `usage.tokens`: …`) when there is one.
fn path_message(e: serde_path_to_error::Error<serde_json::Error>) -> ActionError {
    let path = e.path().to_string();
    let message = json_message(e.inner());
    if path.is_empty() || path == "." {
        ActionError::Json(message)
    } else {
        ActionError::Json(format!("at `{path}`: {message}"))
    }
}

/// serde_json's messages name Rust-free concepts already; keep them, minus the trailing
/// position, which we restate in words.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    if e.line() > 0 {
        format!("{text} (line {}, column {})", e.line(), e.column())
    } else {
        text.to_owned()
    }
}

/// Nesting depth of JSON text, counting brackets outside strings.
fn raw_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn value_depth(value: &Value) -> usize {
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
            r#"{{"type":"t","payload":{}1{}}}"#,
            "[".repeat(60),
            "]".repeat(60)
        );
        assert!(Action::from_json(ok.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let text = format!(r#"{{"type":"t","payload":"{}"}}"#, "[".repeat(100));
        assert!(Action::from_json(text.as_bytes()).is_ok());
        assert!(
            Action::from_json(b"{\"type\":\"t\xff\"}")
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }
}
