//! Runtime values, and CEL's equality, ordering and text forms over them.
//!
//! Input strings, lists and maps are borrowed from the action, never copied. A JSON number
//! stays a borrowed `Json` value so that arithmetic can tell it from a literal: CEL refuses
//! `1 + 1.0`, but a JSON document does not say whether `120` is an int or a double, so a
//! number from the input combines with any numeric kind (docs/POLICY.md).

use super::{EvalError, fail};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::rc::Rc;

/// CEL's type denotations (`type(x) == int`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CelType {
    Null,
    Bool,
    Int,
    UInt,
    Double,
    String,
    Bytes,
    List,
    Map,
    Timestamp,
    Duration,
    Type,
}

impl CelType {
    pub(super) fn name(self) -> &'static str {
        match self {
            CelType::Null => "null_type",
            CelType::Bool => "bool",
            CelType::Int => "int",
            CelType::UInt => "uint",
            CelType::Double => "double",
            CelType::String => "string",
            CelType::Bytes => "bytes",
            CelType::List => "list",
            CelType::Map => "map",
            CelType::Timestamp => "google.protobuf.Timestamp",
            CelType::Duration => "google.protobuf.Duration",
            CelType::Type => "type",
        }
    }

    /// The type a bare identifier or qualified name denotes.
    pub(super) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "null_type" => CelType::Null,
            "bool" => CelType::Bool,
            "int" => CelType::Int,
            "uint" => CelType::UInt,
            "double" => CelType::Double,
            "string" => CelType::String,
            "bytes" => CelType::Bytes,
            "list" => CelType::List,
            "map" => CelType::Map,
            "type" => CelType::Type,
            "google.protobuf.Timestamp" => CelType::Timestamp,
            "google.protobuf.Duration" => CelType::Duration,
            _ => return None,
        })
    }
}

/// A runtime value.
#[derive(Debug, Clone)]
pub(super) enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    Timestamp(Timestamp),
    Duration(SignedDuration),
    Type(CelType),
    /// A JSON number, array or object from the input or a folded literal.
    Json(&'a Value),
    List(Rc<Vec<Val<'a>>>),
    Map(Rc<Vec<(Val<'a>, Val<'a>)>>),
}

/// A number of any kind, for comparisons across kinds.
#[derive(Debug, Clone, Copy)]
pub(super) enum Num {
    I(i64),
    U(u64),
    D(f64),
}

fn json_num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::I(i)
    } else if let Some(u) = n.as_u64() {
        Num::U(u)
    } else {
        Num::D(n.as_f64().unwrap_or(f64::NAN))
    }
}

impl Num {
    pub(super) fn val<'a>(self) -> Val<'a> {
        match self {
            Num::I(i) => Val::Int(i),
            Num::U(u) => Val::UInt(u),
            Num::D(d) => Val::Double(d),
        }
    }
}

impl<'a> Val<'a> {
    pub(super) fn from_json(v: &'a Value) -> Self {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Number(_) | Value::Array(_) | Value::Object(_) => Val::Json(v),
        }
    }

    /// The value with a JSON number turned into the int, uint or double it holds.
    pub(super) fn resolve(self) -> Self {
        match self {
            Val::Json(Value::Number(n)) => json_num(n).val(),
            other => other,
        }
    }

    pub(super) fn is_json_number(&self) -> bool {
        matches!(self, Val::Json(Value::Number(_)))
    }

    pub(super) fn num(&self) -> Option<Num> {
        match self {
            Val::Int(i) => Some(Num::I(*i)),
            Val::UInt(u) => Some(Num::U(*u)),
            Val::Double(d) => Some(Num::D(*d)),
            Val::Json(Value::Number(n)) => Some(json_num(n)),
            _ => None,
        }
    }

    pub(super) fn cel_type(&self) -> CelType {
        match self {
            Val::Null => CelType::Null,
            Val::Bool(_) => CelType::Bool,
            Val::Int(_) => CelType::Int,
            Val::UInt(_) => CelType::UInt,
            Val::Double(_) => CelType::Double,
            Val::Str(_) => CelType::String,
            Val::Bytes(_) => CelType::Bytes,
            Val::Timestamp(_) => CelType::Timestamp,
            Val::Duration(_) => CelType::Duration,
            Val::Type(_) => CelType::Type,
            Val::Json(Value::Number(n)) => match json_num(n) {
                Num::I(_) => CelType::Int,
                Num::U(_) => CelType::UInt,
                Num::D(_) => CelType::Double,
            },
            Val::Json(Value::Array(_)) | Val::List(_) => CelType::List,
            Val::Json(_) | Val::Map(_) => CelType::Map,
        }
    }

    pub(super) fn type_name(&self) -> &'static str {
        self.cel_type().name()
    }

    pub(super) fn list_len(&self) -> Option<usize> {
        match self {
            Val::Json(Value::Array(items)) => Some(items.len()),
            Val::List(items) => Some(items.len()),
            _ => None,
        }
    }

    pub(super) fn list_get(&self, i: usize) -> Option<Val<'a>> {
        match self {
            Val::Json(Value::Array(items)) => items.get(i).map(Val::from_json),
            Val::List(items) => items.get(i).cloned(),
            _ => None,
        }
    }

    /// Looks a key up in a map value; `Err` when the value is not a map.
    pub(super) fn map_get(&self, key: &Val<'_>) -> Result<Option<Val<'a>>, EvalError> {
        match self {
            Val::Json(Value::Object(map)) => Ok(match key {
                Val::Str(k) => map.get(k.as_ref()).map(Val::from_json),
                _ => None,
            }),
            Val::Map(entries) => Ok(entries
                .iter()
                .find(|(k, _)| equal(k, key))
                .map(|(_, v)| v.clone())),
            other => fail(format!("cannot look up a key in {}", other.type_name())),
        }
    }

    pub(super) fn map_len(&self) -> Option<usize> {
        match self {
            Val::Json(Value::Object(map)) => Some(map.len()),
            Val::Map(entries) => Some(entries.len()),
            _ => None,
        }
    }

    /// The keys of a map value, in order.
    pub(super) fn map_keys(&self) -> Vec<Val<'a>> {
        match self {
            Val::Json(Value::Object(map)) => map
                .keys()
                .map(|k| Val::Str(Cow::Borrowed(k.as_str())))
                .collect(),
            Val::Map(entries) => entries.iter().map(|(k, _)| k.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// The value as reason templates show it.
    pub(super) fn write_text(&self, out: &mut String) {
        match self {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Val::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            Val::Double(d) => write_double(*d, out),
            Val::Str(s) => out.push_str(s),
            Val::Bytes(b) => out.push_str(&String::from_utf8_lossy(b)),
            Val::Timestamp(t) => super::time::write_timestamp(*t, out),
            Val::Duration(d) => super::time::write_duration(*d, out),
            Val::Type(t) => out.push_str(t.name()),
            Val::Json(v) => out.push_str(&v.to_string()),
            Val::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_text(out);
                }
                out.push(']');
            }
            Val::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_text(out);
                    out.push_str(": ");
                    v.write_text(out);
                }
                out.push('}');
            }
        }
    }
}

pub(super) fn write_double(d: f64, out: &mut String) {
    if d.is_infinite() {
        out.push_str(if d > 0.0 { "+Inf" } else { "-Inf" });
    } else if d.is_nan() {
        out.push_str("NaN");
    } else {
        let _ = write!(out, "{d}");
    }
}

/// 2^63 and 2^64 as doubles: the first values outside int64 and uint64.
pub(super) const TWO_63: f64 = 9_223_372_036_854_775_808.0;
pub(super) const TWO_64: f64 = 18_446_744_073_709_551_616.0;

/// Orders numbers of any kinds as CEL does: ints and uints exactly, anything against a
/// double by converting it to a double (so `9223372036854775807 < 9223372036854775808.0`
/// is false, as in CEL); `None` when a NaN is involved.
pub(super) fn cmp_num(a: Num, b: Num) -> Option<Ordering> {
    let double = |n: Num| match n {
        Num::I(i) => i as f64,
        Num::U(u) => u as f64,
        Num::D(d) => d,
    };
    match (a, b) {
        (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
        (Num::U(x), Num::U(y)) => Some(x.cmp(&y)),
        (Num::I(x), Num::U(y)) => Some(match u64::try_from(x) {
            Ok(x) => x.cmp(&y),
            Err(_) => Ordering::Less,
        }),
        (Num::U(_), Num::I(_)) => cmp_num(b, a).map(Ordering::reverse),
        _ => double(a).partial_cmp(&double(b)),
    }
}

/// CEL equality: numbers by value across kinds, containers element by element, values of
/// different types unequal.
pub(super) fn equal(a: &Val<'_>, b: &Val<'_>) -> bool {
    if let (Some(x), Some(y)) = (a.num(), b.num()) {
        return cmp_num(x, y) == Some(Ordering::Equal);
    }
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bytes(x), Val::Bytes(y)) => x == y,
        (Val::Timestamp(x), Val::Timestamp(y)) => x == y,
        (Val::Duration(x), Val::Duration(y)) => x == y,
        (Val::Type(x), Val::Type(y)) => x == y,
        _ => match (a.list_len(), b.list_len()) {
            (Some(n), Some(m)) => {
                n == m
                    && (0..n).all(|i| match (a.list_get(i), b.list_get(i)) {
                        (Some(x), Some(y)) => equal(&x, &y),
                        _ => false,
                    })
            }
            _ => match (a.map_len(), b.map_len()) {
                (Some(n), Some(m)) if n == m => {
                    a.map_keys()
                        .into_iter()
                        .all(|k| match (a.map_get(&k), b.map_get(&k)) {
                            (Ok(Some(v)), Ok(Some(w))) => equal(&v, &w),
                            _ => false,
                        })
                }
                _ => false,
            },
        },
    }
}

/// CEL ordering; `Ok(None)` when a NaN is involved (every comparison is then false).
pub(super) fn compare(a: &Val<'_>, b: &Val<'_>) -> Result<Option<Ordering>, EvalError> {
    if let (Some(x), Some(y)) = (a.num(), b.num()) {
        return Ok(cmp_num(x, y));
    }
    let ordering = match (a, b) {
        (Val::Str(x), Val::Str(y)) => x.cmp(y),
        (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
        (Val::Bytes(x), Val::Bytes(y)) => x.cmp(y),
        (Val::Timestamp(x), Val::Timestamp(y)) => x.cmp(y),
        (Val::Duration(x), Val::Duration(y)) => x.cmp(y),
        _ => {
            return fail(format!(
                "cannot compare {} with {}",
                a.type_name(),
                b.type_name()
            ));
        }
    };
    Ok(Some(ordering))
}
