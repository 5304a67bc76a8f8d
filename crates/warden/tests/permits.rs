//! Permits as another language sees them: Python's `json` and a small RFC 8785
//! canonicalizer (`tests/conformance/permits.py`, the recipe of docs/PERMITS.md) must
//! compute the same payload digest as the server for the same JSON text, and verify a
//! server-signed token offline with the published key.
//!
//! Without Python's `cryptography` the test prints `SKIPPED` loudly and passes; with `CI`
//! set it fails instead, like `conformance.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use warden_policy::{Action, PermitSettings};
use warden_server::jcs;
use warden_server::permits::{Grant, PermitKeys};

mod common;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/permits.py");
const INSTALL: &str = "python3 -m pip install -r crates/warden/tests/conformance/requirements.txt";

/// JSON texts whose canonical form is easy to get wrong: ECMAScript number formatting,
/// rounding at parse time, integers beyond 2^53, escapes and UTF-16 key order.
const PAYLOADS: &[&str] = &[
    r#"{"a": 1e21, "b": 1e20, "c": 0.1, "d": -0.0, "e": 1.0, "f": 1e-7, "g": 1e-6}"#,
    r#"{"big": 123456789012345678901234567890, "u64": 18446744073709551615, "i64": -9223372036854775808}"#,
    r#"{"near": [9007199254740993, 9007199254740992, -9007199254740993]}"#,
    r#"{"tiny": 5e-324, "max": 1.7976931348623157e308, "sum": 0.30000000000000004, "x": 2.5e-5}"#,
    r#"{"hard": [2.2250738585072011e-308, 0.1000000000000000055511151231257827, 9007199254740993.0000000001, 1.00000000000000011102230246251565404236316680908203125]}"#,
    r#"{"round": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001, 123e-2, 100e+1]}"#,
    r#"{"s": "\u00e9\ud83d\ude00\u2028\u0000\u001f\u007f\"\\/\b\f\n\r\t", "plain": "ünïcödé €"}"#,
    r#"{"\ue000": 1, "\ud83d\ude00": 2, "b": 3, "a": 4, "aa": 5, "A": 6, "": 7, "\u00e9": 8}"#,
    r#"{"nested": {"z": [], "y": {}, "x": [{"b": null, "a": true}, false]}, "n": [-1, 0, 1.5e300]}"#,
    r#"{"resolution": "refund issued", "external": false, "amount": 12.50}"#,
    "{}",
    "null",
];

fn python_available() -> bool {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = Command::new(&python)
        .args(["-c", "import cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    common::missing_tools(&format!("python's `cryptography` for `{python}`"), INSTALL)
}

fn run_python(request: &Value) -> Value {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = Command::new(python)
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "permits.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn python_computes_the_same_payload_digests_and_verifies_offline() {
    if !python_available() {
        return;
    }
    // The server's own parser and digest, as `POST /v1/decisions` and verify use them.
    let server: Vec<String> = PAYLOADS
        .iter()
        .map(|text| {
            jcs::payload_sha256(&warden_policy::json::parse_strict(text.as_bytes()).unwrap())
        })
        .collect();

    let keys = PermitKeys::ephemeral();
    let action = Action::from_value(json!({
        "type": "ticket.resolve",
        "target": {"type": "ticket", "id": "T-1042"},
        "agent": "support-bot",
        "payload": warden_policy::json::parse_strict(PAYLOADS[0].as_bytes()).unwrap(),
    }))
    .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let issued = keys
        .issue(&Grant {
            decision_id: "01JD8Z9R6W3K2Q5N7X4T0M1B8C",
            tenant: "acme",
            action: &action,
            settings: PermitSettings::default(),
            now_ms,
        })
        .unwrap();
    let answer = run_python(&json!({
        "payloads": PAYLOADS,
        "token": issued.token,
        "keys": {"keys": keys.public_keys(now_ms)},
        "offline_payloads": [
            // The same payload, written differently.
            r#"{"g":0.000001,"f":1E-7,"e":1,"d":0,"c":0.1,"b":100000000000000000000,"a":1000000000000000000000}"#,
            r#"{"a": 1e21, "b": 1e20, "c": 0.1, "d": -0.0, "e": 1.0, "f": 1e-7, "g": 2e-6}"#,
        ],
    }));
    let python: Vec<String> = serde_json::from_value(answer["digests"].clone()).unwrap();
    for ((text, ours), theirs) in PAYLOADS.iter().zip(&server).zip(&python) {
        assert_eq!(ours, theirs, "digests differ for {text}");
    }
    assert_eq!(
        answer["offline"],
        json!(["valid:01JD8Z9R6W3K2Q5N7X4T0M1B8C", "payload_mismatch"])
    );
}
