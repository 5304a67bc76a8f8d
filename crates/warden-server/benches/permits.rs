//! `cargo bench -p warden-server --bench permits`: offline permit verification in-process on
//! one core — what an executor linking Warden's code does per action: parse the token,
//! check the Ed25519 signature and the expiry, canonicalize the payload (RFC 8785) and
//! compare its SHA-256. Also the cost of issuing one (signing, on every allow).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};
use warden_policy::{Action, PermitSettings};
use warden_server::jcs;
use warden_server::permits::{Grant, PermitKeys};

const BUDGET: Duration = Duration::from_secs(3);

/// Runs `f` repeatedly for about [`BUDGET`] on this thread; returns calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < BUDGET {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let payload: Value = json!({
        "resolution": "refund issued", "external": false, "amount": 40.25,
        "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}], "note": "ünïcode"
    });
    let action = Action::from_value(json!({
        "type": "ticket.resolve", "target": {"type": "ticket", "id": "T-1042"},
        "agent": "support-bot", "payload": payload,
    }))
    .unwrap();
    let keys = PermitKeys::ephemeral();
    let now_ms = 1_800_000_000_000;
    let grant = Grant {
        decision_id: "01JD8Z9R6W3K2Q5N7X4T0M1B8C",
        tenant: "acme",
        action: &action,
        settings: PermitSettings::default(),
        now_ms,
    };
    let token = keys.issue(&grant).unwrap().token;
    println!("token: {} bytes", token.len());

    let verify = rate(|| {
        let checked = keys
            .check(black_box(&token), "acme", now_ms + 1000)
            .unwrap();
        assert_eq!(
            jcs::payload_sha256(black_box(&payload)),
            checked.claims.payload_sha256
        );
    });
    let signature_only = rate(|| {
        keys.check(black_box(&token), "acme", now_ms + 1000)
            .unwrap();
    });
    // An executor draining a queue checks its permits together: one batch verification.
    let batched = |size: usize| {
        let payloads: Vec<Value> = (0..size)
            .map(|n| {
                let mut p = payload.clone();
                p["n"] = json!(n);
                p
            })
            .collect();
        let tokens: Vec<String> = payloads
            .iter()
            .map(|p| {
                let mut a = action.clone();
                a.payload = p.clone();
                keys.issue(&Grant {
                    action: &a,
                    ..grant
                })
                .unwrap()
                .token
            })
            .collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        size as f64
            * rate(|| {
                let checked = keys.check_many(black_box(&refs), "acme", now_ms + 1000);
                for (c, p) in checked.iter().zip(&payloads) {
                    assert_eq!(
                        jcs::payload_sha256(black_box(p)),
                        c.as_ref().unwrap().claims.payload_sha256
                    );
                }
            })
    };
    let batch8 = batched(8);
    let batch64 = batched(64);
    let issue = rate(|| {
        black_box(keys.issue(black_box(&grant)).unwrap());
    });
    println!(
        "offline verify (token + signature + expiry + payload digest): {verify:>9.0} /s, {:>6.1} µs each",
        1e6 / verify
    );
    println!(
        "  of which token + signature + expiry:                        {signature_only:>9.0} /s, {:>6.1} µs each",
        1e6 / signature_only
    );
    println!(
        "offline verify, 8 at once (check_many) + payload digests:    {batch8:>9.0} /s, {:>6.1} µs each",
        1e6 / batch8
    );
    println!(
        "offline verify, 64 at once (check_many) + payload digests:   {batch64:>9.0} /s, {:>6.1} µs each",
        1e6 / batch64
    );
    println!(
        "issue (sign) a permit:                                        {issue:>9.0} /s, {:>6.1} µs each",
        1e6 / issue
    );
}
