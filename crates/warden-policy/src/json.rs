//! Strict JSON for request bodies: one meaning for every document. A key repeated in any
//! object, nesting deeper than [`MAX_DEPTH`] and invalid UTF-8 are refused, so Warden never
//! reads a body differently from the caller's own parser.

use serde_json::Value;

/// The deepest JSON nesting a request body may have.
pub const MAX_DEPTH: usize = 64;

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON, with the position in words.
    #[error("{0}")]
    Syntax(String),
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

/// Parses `bytes` as strict JSON.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        JsonError::Syntax(format!(
            "body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    // serde_json stops at 128 levels on its own; checking the raw text first keeps a deep
    // document from being built at all.
    if raw_depth(text) > MAX_DEPTH {
        return Err(JsonError::TooDeep);
    }
    strict::parse(text)
}

/// serde_json's syntax messages describe the input; keep them, minus the trailing
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

/// A JSON parser that refuses a key repeated in any object, at any depth. serde_json keeps
/// the last of repeated keys and other parsers the first, so a body with repeats means one
/// thing to the caller and another to Warden: a bypass, e.g. `{"role": "restricted",
/// "role": "agent"}`.
mod strict {
    use super::{JsonError, json_message};
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde_json::map::Entry;
    use serde_json::{Map, Number, Value};
    use std::cell::RefCell;
    use std::fmt;

    /// Parses `text`, naming the path of the first repeated key.
    pub(super) fn parse(text: &str) -> Result<Value, JsonError> {
        let repeated = RefCell::new(None::<Vec<String>>);
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = Strict {
            repeated: &repeated,
        }
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
        match (parsed, repeated.into_inner()) {
            (_, Some(mut segments)) => {
                segments.reverse();
                let mut path = String::new();
                for segment in segments {
                    if !segment.starts_with('[') && !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&segment);
                }
                Err(JsonError::DuplicateKey { path })
            }
            (Ok(value), None) => Ok(value),
            (Err(e), None) => Err(JsonError::Syntax(json_message(&e))),
        }
    }

    /// Builds a `Value` like serde_json's own, recording where a key repeats. The path is
    /// collected on the way out of the error, so parsing a good body costs nothing extra.
    #[derive(Clone, Copy)]
    struct Strict<'a> {
        repeated: &'a RefCell<Option<Vec<String>>>,
    }

    impl Strict<'_> {
        fn note(&self, segment: String) {
            if let Some(path) = self.repeated.borrow_mut().as_mut() {
                path.push(segment);
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Strict<'_> {
        type Value = Value;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Strict<'_> {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            loop {
                match seq.next_element_seed(self) {
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => return Ok(Value::Array(items)),
                    Err(e) => {
                        self.note(format!("[{}]", items.len()));
                        return Err(e);
                    }
                }
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
            let mut map = Map::new();
            while let Some(key) = access.next_key::<String>()? {
                let value = match access.next_value_seed(self) {
                    Ok(value) => value,
                    Err(e) => {
                        self.note(key);
                        return Err(e);
                    }
                };
                match map.entry(key) {
                    Entry::Vacant(slot) => {
                        slot.insert(value);
                    }
                    Entry::Occupied(slot) => {
                        *self.repeated.borrow_mut() = Some(vec![slot.key().clone()]);
                        return Err(de::Error::custom("duplicate key"));
                    }
                }
            }
            Ok(Value::Object(map))
        }
    }
}
