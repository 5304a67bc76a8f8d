//! `cargo bench -p warden-policy --bench review`: reviewing a one-rule proposal against the
//! Nexus policy plus 1,000 rules (issue 12: median under 50 ms, proof included), for a
//! narrowing change (proven: two solver questions) and a broadening one (a model, turned
//! into counterexamples that are evaluated).
//!
//! Each review is timed on its own; the median and p99 are of single reviews.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::warden_policy;
use serde_json::json;
use std::time::{Duration, Instant};
use warden_policy::review::{Inputs, Proposal, Status, review};
use warden_policy::{Policy, Timestamp};

const SAMPLES: usize = 60;

fn measure(name: &str, source: &str, changes: serde_json::Value, want: Status) -> String {
    let live = Policy::parse(source).unwrap();
    // The server keeps the live document beside the compiled policy, as read once.
    let document = warden_policy::review::document(source).unwrap();
    let proposal = Proposal::from_value(json!({
        "rationale": "benchmark", "risks": ["none"], "changes": changes
    }))
    .unwrap();
    let inputs = Inputs {
        tenant: "acme",
        live_document: &document,
        live: &live,
        proposer: Some("support-bot"),
        evidence: &[],
        recent: &[],
        history: &[],
        replaced: &[],
        now: Timestamp::from_unix_seconds(1_800_000_000).unwrap(),
        solver_timeout: Duration::from_secs(2),
    };
    let first = review(&proposal, &inputs).unwrap();
    assert_eq!(first.status, want, "{name}: {:?}", first.reasons);
    let candidate = first.candidate.source.clone();
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            let r = review(&proposal, &inputs).unwrap();
            let took = started.elapsed();
            assert_eq!(r.status, want);
            took
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<52} median {:>7.2} ms   p99 {:>7.2} ms   ({} samples)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        SAMPLES
    );
    candidate
}

fn main() {
    let narrowing = || json!([{"op": "add_rule", "rule": {"id": "no-big-refunds", "actions": ["billing.refund"], "agents": ["support-bot"], "when": "action.payload.amount > 1000", "effect": "deny"}}]);
    let broadening = || json!([{"op": "add_rule", "rule": {"id": "refund-bot", "actions": ["billing.refund"], "agents": ["refund-bot"], "effect": "allow"}}]);
    for n in [0, 1_000] {
        let source = warden_policy(n);
        let name =
            |what: &str, form: &str| format!("{what} one-rule proposal, nexus + {n} rules, {form}");
        measure(
            &name("narrowing", "YAML"),
            &source,
            narrowing(),
            Status::AutoApproved,
        );
        // Every version a proposal publishes is JSON, which reads faster than YAML.
        let published = measure(
            &name("broadening", "YAML"),
            &source,
            broadening(),
            Status::NeedsHuman,
        );
        let json = published.replace("\"refund-bot\"", "\"refund-bot-old\"");
        measure(
            &name("narrowing", "JSON"),
            &json,
            narrowing(),
            Status::AutoApproved,
        );
    }
}
