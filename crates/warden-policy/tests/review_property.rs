//! Whenever the review proves a candidate narrowing or neutral, no action is treated more
//! permissively by it than by the live policy: random policy pairs over a small vocabulary,
//! each checked against every action of a grid that covers the vocabulary's boundaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Value, json};
use std::time::Duration;
use warden_policy::review::{Classification, compare};
use warden_policy::{Action, Decision, Env, Policy, Timestamp, Verdict};

const TYPES: [&str; 3] = ["ticket.get", "ticket.resolve", "email.send"];
const AGENTS: [&str; 3] = ["support-bot", "support-x", "triage-bot"];
const ROLES: [&str; 2] = ["restricted", "agent"];
const AMOUNTS: [i64; 4] = [0, 50, 100, 500];
const CONFIDENCES: [f64; 3] = [0.5, 0.85, 0.95];

fn conditions() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (0..AMOUNTS.len()).prop_map(|i| Some(format!("action.payload.amount > {}", AMOUNTS[i]))),
        (0..CONFIDENCES.len())
            .prop_map(|i| Some(format!("action.confidence < {}", CONFIDENCES[i]))),
        (0..ROLES.len()).prop_map(|i| Some(format!("context.user.role == \"{}\"", ROLES[i]))),
        (0..ROLES.len(), 0..AMOUNTS.len()).prop_map(|(r, a)| Some(format!(
            "context.user.role == \"{}\" || action.payload.amount >= {}",
            ROLES[r], AMOUNTS[a]
        ))),
        Just(Some(
            "has(action.payload.amount) && action.payload.amount > 10".to_owned()
        )),
        (0..CONFIDENCES.len())
            .prop_map(|i| Some(format!("action.confidence <= {}", CONFIDENCES[i]))),
    ]
}

fn rule() -> impl Strategy<Value = Value> {
    let actions = prop_oneof![
        (0..TYPES.len()).prop_map(|i| json!([TYPES[i]])),
        Just(json!(["ticket.*"])),
        Just(json!(["*.send"])),
    ];
    let agents = prop_oneof![
        Just(None),
        (0..AGENTS.len()).prop_map(|i| Some(json!([AGENTS[i]]))),
        Just(Some(json!(["support-*"]))),
    ];
    let effect = prop_oneof![
        Just("allow"),
        Just("deny"),
        Just("require_approval"),
        Just("modify")
    ];
    (actions, agents, conditions(), effect).prop_map(|(actions, agents, when, effect)| {
        let mut r = json!({"actions": actions, "effect": effect});
        if let Some(a) = agents {
            r["agents"] = a;
        }
        if let Some(w) = when {
            r["when"] = json!(w);
        }
        if effect == "modify" {
            r["set"] = json!({"mode": "draft"});
        }
        r
    })
}

fn policy(rules: Vec<Value>, default: &str, tiered: bool) -> String {
    let rules: Vec<Value> = rules
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r["id"] = json!(format!("r{i}"));
            r
        })
        .collect();
    let mut doc = json!({"version": "1.0.0", "default": default, "rules": rules});
    if tiered {
        doc["agents"] = json!({"triage-bot": {"tier": "observe"}});
    }
    doc.to_string()
}

/// Every combination of the vocabulary, with and without each optional field.
fn grid() -> Vec<Action> {
    let mut out = Vec::new();
    for ty in TYPES {
        for agent in AGENTS.iter().map(Some).chain([None]) {
            for role in ROLES.iter().map(Some).chain([None]) {
                for amount in [-1, 0, 1, 10, 11, 50, 51, 100, 101, 500, 501]
                    .map(Some)
                    .into_iter()
                    .chain([None])
                {
                    for confidence in [0.4, 0.85, 0.9, 0.96].map(Some).into_iter().chain([None]) {
                        let mut a = json!({"type": ty});
                        if let Some(agent) = agent {
                            a["agent"] = json!(agent);
                        }
                        if let Some(role) = role {
                            a["context"] = json!({"user": {"role": role}});
                        }
                        if let Some(amount) = amount {
                            a["payload"] = json!({"amount": amount});
                        }
                        if let Some(c) = confidence {
                            a["confidence"] = json!(c);
                        }
                        out.push(Action::from_value(a).expect("grid actions are valid"));
                    }
                }
            }
        }
    }
    out
}

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Deny => 0,
        Verdict::RequireApproval => 1,
        Verdict::Allow => 2,
    }
}

fn more_permissive(l: &Decision, c: &Decision) -> bool {
    if l.verdict != c.verdict {
        return rank(c.verdict) > rank(l.verdict);
    }
    l.verdict != Verdict::Deny && l.obligations.mode.is_some() && c.obligations.mode.is_none()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_proven_narrowing_is_never_contradicted(
        live_rules in proptest::collection::vec(rule(), 1..5),
        extra in proptest::collection::vec(rule(), 0..3),
        drop in proptest::collection::vec(any::<bool>(), 5),
        default_live in prop_oneof![Just("deny"), Just("allow")],
        default_cand in prop_oneof![Just("deny"), Just("allow")],
        tiered in any::<bool>(),
    ) {
        // The candidate keeps some of the live rules and adds others.
        let kept: Vec<Value> = live_rules
            .iter()
            .zip(drop.iter().chain(std::iter::repeat(&false)))
            .filter(|(_, d)| !**d)
            .map(|(r, _)| r.clone())
            .chain(extra)
            .collect();
        let live = Policy::parse(&policy(live_rules, default_live, tiered)).expect("live compiles");
        let cand = Policy::parse(&policy(kept, default_cand, tiered)).expect("candidate compiles");
        let result = compare(&live, &cand, "acme", Duration::from_secs(10));
        let env = Env::new("acme", Timestamp::from_unix_seconds(1_800_000_000).expect("time"));
        match result.classification {
            Classification::Narrowing | Classification::Neutral => {
                for action in grid() {
                    let (l, c) = (live.evaluate(&action, &env), cand.evaluate(&action, &env));
                    prop_assert!(
                        !more_permissive(&l, &c),
                        "proven {:?}, yet {:?} goes from {:?} to {:?}",
                        result.classification, action, l.verdict, c.verdict
                    );
                    if result.classification == Classification::Neutral {
                        prop_assert_eq!(l.verdict, c.verdict, "proven neutral, yet {:?} differs", action);
                    }
                }
            }
            Classification::Broadening => {
                for cx in &result.counterexamples {
                    let action = Action::from_value(cx.action.clone()).expect("a counterexample is an action");
                    let (l, c) = (live.evaluate(&action, &env), cand.evaluate(&action, &env));
                    prop_assert!(more_permissive(&l, &c) || l.verdict == c.verdict && l.verdict != Verdict::Deny,
                        "counterexample {} does not reproduce", cx.action);
                }
            }
            Classification::Forbidden => {}
        }
    }
}
