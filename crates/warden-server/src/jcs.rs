//! RFC 8785 (JSON Canonicalization Scheme) and the payload digest a permit binds.
//!
//! Key decision: written here rather than taken from a crate. The scheme is small (sorted
//! keys, minimal string escapes, ECMAScript number formatting), the crates that implement
//! it are thinly maintained, and the digest must match what an executor computes in any
//! language, so every rule is spelled out below and pinned by tests, including a Python
//! cross-check (`crates/warden/tests/permits.rs`). The digest is unkeyed on purpose: the
//! executor must be able to recompute it without a secret.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// The canonical form of `value` (RFC 8785).
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// Lowercase hex SHA-256 of the canonical form of `value`: what a permit's
/// `payload_sha256` holds. An absent payload is `null`.
pub fn payload_sha256(value: &Value) -> String {
    hex::encode(Sha256::digest(canonical(value).as_bytes()))
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            // RFC 8785 §3.2.2.3: every number is an IEEE 754 double. Integers beyond 2^53
            // are rounded to the nearest double, as JavaScript and Python's float() do.
            let v = if let Some(i) = n.as_i64() {
                i as f64
            } else if let Some(u) = n.as_u64() {
                u as f64
            } else {
                n.as_f64().unwrap_or(0.0)
            };
            write_number(out, v);
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // §3.2.3: keys sorted by their UTF-16 code units, not by UTF-8 bytes (they
            // differ above the BMP versus U+E000..U+FFFF).
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// §3.2.2.2: the escapes of ECMAScript's `JSON.stringify`: `"` and `\`, the five short
/// forms, other control characters as `\u00xx` (lowercase hex), everything else as is.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// §3.2.2.3: ECMAScript's `Number.prototype.toString` for a finite double: the shortest
/// digits that round-trip, placed as ES does (plain up to 21 integer digits, down to
/// `0.000001`, exponent form otherwise), `-0` as `0`.
pub fn write_number(out: &mut String, v: f64) {
    if v == 0.0 || !v.is_finite() {
        // JSON has no NaN or infinity; a zero of either sign is `0`.
        out.push('0');
        return;
    }
    if v < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` prints the shortest round-trip digits: `d.ddde±x` (sign only if
    // negative).
    let sci = format!("{:e}", v.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let k = digits.len() as i32;
    // The decimal point sits after `n` digits.
    let n = exponent + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn number(v: f64) -> String {
        let mut out = String::new();
        write_number(&mut out, v);
        out
    }

    #[test]
    fn numbers_print_as_ecmascript_prints_them() {
        let table: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1.0e23, "1e+23"),
            (9007199254740991.0, "9007199254740991"),
            (9007199254740993.0, "9007199254740992"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-1e-7, "-1e-7"),
            (333333333.3333333, "333333333.3333333"),
            (4.5, "4.5"),
            (0.000001234, "0.000001234"),
        ];
        for (v, expected) in table {
            assert_eq!(number(*v), *expected, "{v:e}");
        }
    }

    /// The examples of RFC 8785 §3.2.2 and Appendix B that JSON can carry.
    #[test]
    fn the_rfc_examples_canonicalize_as_written() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let value: Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            canonical(&value),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+1F600 is D83D DE00 in UTF-16, below U+E000 although its UTF-8 is greater.
        let value = json!({"\u{e000}": 1, "\u{1f600}": 2, "b": 3, "a": 4, "aa": 5, "A": 6});
        assert_eq!(
            canonical(&value),
            "{\"A\":6,\"a\":4,\"aa\":5,\"b\":3,\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn large_integers_are_doubles_and_whitespace_and_order_do_not_matter() {
        let a: Value = serde_json::from_str(
            r#"{"n": 18446744073709551615, "m": -9007199254740993, "x": [1.0, 1e2]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical(&a),
            r#"{"m":-9007199254740992,"n":18446744073709552000,"x":[1,100]}"#
        );
        let b: Value = serde_json::from_str(
            r#"{ "x" : [ 1 , 100.0 ] , "n":1.8446744073709552e19,"m":-9007199254740992}"#,
        )
        .unwrap();
        assert_eq!(payload_sha256(&a), payload_sha256(&b));
        assert_eq!(
            payload_sha256(&Value::Null),
            hex::encode(Sha256::digest(b"null"))
        );
    }

    #[test]
    fn control_characters_and_unicode_escape_minimally() {
        let value = json!("\u{1}\u{1f}\u{7f}\u{2028}é\t");
        assert_eq!(canonical(&value), "\"\\u0001\\u001f\u{7f}\u{2028}é\\t\"");
    }
}
