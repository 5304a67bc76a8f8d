//! Bad input never panics: property tests over the YAML parser, the CEL compiler and the
//! evaluator. Case counts are small enough for CI; raise PROPTEST_CASES locally to dig deeper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::LazyLock;
use warden_policy::{Action, Env, Policy, ReasonCode, Replayed, Snapshot, Timestamp, Verdict};

const NEXUS: &str = include_str!("../../../examples/nexus/nexus.yaml");

fn env() -> Env {
    Env::new("acme", Timestamp::from_unix_seconds(1_700_000_000).unwrap())
}

/// Arbitrary JSON, a few levels deep, with keys the Nexus policy reads.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z_ ]{0,8}".prop_map(Value::from),
        Just(json!("legal_sensitive")),
        Just(json!("restricted")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop_oneof![
            Just("user".to_string()),
            Just("role".to_string()),
            Just("flags".to_string()),
            Just("ticket".to_string()),
            Just("external".to_string()),
            Just("amount".to_string()),
            "[a-z]{1,5}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn action() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("ticket.resolve"),
            Just("email.send"),
            Just("ticket.escalate"),
            Just("db.write_x"),
            Just("billing.refund"),
            Just("ticket.get"),
            Just("unknown.thing"),
        ],
        prop::option::of(0.0f64..=1.0),
        prop::option::of(prop_oneof![
            Just("support-bot"),
            Just("triage-bot"),
            Just("stranger"),
            Just("support-"),
        ]),
        prop::option::of(prop_oneof![Just("helpdesk"), Just("other")]),
        json_value(),
        json_value(),
    )
        .prop_map(|(kind, confidence, agent, app, payload, context)| {
            // Payload and context are objects (or absent) in every accepted action.
            let object = |v: Value| {
                if v.is_object() || v.is_null() {
                    v
                } else {
                    json!({"v": v})
                }
            };
            let mut a =
                json!({"type": kind, "payload": object(payload), "context": object(context)});
            if let Some(c) = confidence {
                a["confidence"] = json!(c);
            }
            if let Some(agent) = agent {
                a["agent"] = json!(agent);
            }
            if let Some(app) = app {
                a["app"] = json!(app);
            }
            a
        })
}

/// CEL-shaped text from a small grammar, so most cases parse and exercise the evaluator.
fn cel() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("action.confidence".to_string()),
        Just("action.type".to_string()),
        Just("action.payload.amount".to_string()),
        Just("context.user.role".to_string()),
        Just("context.ticket.flags".to_string()),
        Just("agent.id".to_string()),
        Just("now".to_string()),
        Just("tenant".to_string()),
        (-100i64..100).prop_map(|n| n.to_string()),
        (0.0f64..1.0).prop_map(|f| format!("{f:.3}")),
        "[a-z]{0,4}".prop_map(|s| format!("'{s}'")),
        Just("[1, 'a', true]".to_string()),
        Just("{'k': 1}".to_string()),
        Just("null".to_string()),
    ];
    atom.prop_recursive(5, 40, 3, |inner| {
        let op = prop_oneof![
            Just("=="),
            Just("!="),
            Just("<"),
            Just(">="),
            Just("+"),
            Just("-"),
            Just("*"),
            Just("/"),
            Just("%"),
            Just("&&"),
            Just("||"),
            Just("in"),
        ];
        prop_oneof![
            (inner.clone(), op, inner.clone()).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("!{a}")),
            inner.clone().prop_map(|a| format!("size({a})")),
            inner.clone().prop_map(|a| format!("has({a}.x)")),
            inner.clone().prop_map(|a| format!("{a}.startsWith('s')")),
            inner.clone().prop_map(|a| format!("{a}.exists(x, x == 1)")),
            inner.clone().prop_map(|a| format!("{a}.map(x, x + 1)")),
            (inner.clone(), inner.clone(), inner)
                .prop_map(|(c, t, f)| format!("({c} ? {t} : {f})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,200}") {
        let _ = Policy::parse(&text);
    }

    #[test]
    fn mutated_policies_never_panic(edits in prop::collection::vec((0usize..4000, any::<char>(), any::<bool>()), 1..6)) {
        let mut text: Vec<char> = NEXUS.chars().collect();
        for (at, c, insert) in edits {
            let at = at % text.len().max(1);
            if insert {
                text.insert(at, c);
            } else if !text.is_empty() {
                text.remove(at);
            }
        }
        let text: String = text.into_iter().collect();
        if let Ok(policy) = Policy::parse(&text) {
            let a = Action::from_value(json!({"type": "ticket.resolve", "confidence": 0.5, "agent": "support-bot"})).unwrap();
            let _ = policy.evaluate(&a, &env());
        }
    }

    #[test]
    fn evaluation_always_answers_and_errors_always_deny(a in action()) {
        let policy = Policy::parse(NEXUS).unwrap();
        let a = Action::from_value(a).unwrap();
        let d = policy.evaluate(&a, &env());
        prop_assert!(!d.reasons.is_empty());
        if d.failure.is_some() {
            prop_assert_eq!(d.verdict, Verdict::Deny);
            prop_assert_eq!(d.reasons[0].code, ReasonCode::EvaluationError);
        }
        if let Some(c) = d.confidence {
            prop_assert!((0.0..=1.0).contains(&c.adjusted));
        }
    }

    #[test]
    fn arbitrary_conditions_compile_or_fail_cleanly_and_never_panic(when in cel(), a in action()) {
        let source = format!(
            "version: 1.0.0\ndefault: allow\nrules:\n  - id: r\n    actions: [\"*\"]\n    effect: deny\n    when: {}\n    reason: {}\n",
            serde_json::to_string(&when).unwrap(),
            serde_json::to_string(&format!("got {{{{{when}}}}}")).unwrap(),
        );
        if let Ok(policy) = Policy::parse(&source) {
            let a = Action::from_value(a).unwrap();
            let d = policy.evaluate(&a, &env());
            // What this one-rule policy implies: an error denies as `evaluation_error`; the
            // rule, when it matches, denies with its reason; otherwise the default allows.
            let matched = d.matched_rules().any(|r| r.as_str() == "r");
            match (d.failure.is_some(), matched) {
                (true, _) => {
                    prop_assert_eq!(d.verdict, Verdict::Deny);
                    prop_assert_eq!(d.reasons[0].code, ReasonCode::EvaluationError);
                }
                (false, true) => {
                    prop_assert_eq!(d.verdict, Verdict::Deny);
                    prop_assert_eq!(d.reasons[0].code, ReasonCode::PolicyRule);
                    prop_assert!(d.reasons[0].message.starts_with("got "));
                }
                (false, false) => {
                    prop_assert_eq!(d.verdict, Verdict::Allow);
                    prop_assert_eq!(d.reasons.len(), 1);
                    prop_assert_eq!(d.reasons[0].code, ReasonCode::DefaultEffect);
                }
            }
        }
    }

    /// A policy replayed over the snapshots it takes gives the verdicts it evaluates to:
    /// whatever a condition reads is held, however it reads it (nothing here is redacted).
    #[test]
    fn replaying_a_policy_over_its_own_snapshots_agrees_with_evaluating(when in cel(), a in action()) {
        let one_rule = format!(
            "version: 1.0.0\ndefault: allow\nagents: {{\"support-*\": {{tier: draft}}}}\nrules:\n  - id: r\n    actions: [\"*\"]\n    effect: deny\n    when: {}\n",
            serde_json::to_string(&when).unwrap(),
        );
        static NEXUS_UNREDACTED: LazyLock<Policy> = LazyLock::new(|| {
            Policy::parse(&NEXUS.replace("redact: [context.user.email]", "redact: []")).unwrap()
        });
        let a = Action::from_value(a).unwrap();
        let one_rule = Policy::parse(&one_rule).ok();
        for policy in [one_rule.as_ref(), Some(&*NEXUS_UNREDACTED)].into_iter().flatten() {
            let bytes = policy.snapshot(&a).to_json_bytes();
            let stored = Snapshot::from_json_bytes(&bytes).unwrap();
            let evaluated = policy.evaluate(&a, &env()).verdict;
            prop_assert_eq!(policy.replay(&stored, &env()), Replayed::Decided(evaluated));
        }
    }

    #[test]
    fn arbitrary_action_bodies_are_refused_cleanly(body in "\\PC{0,120}") {
        let _ = Action::from_json(body.as_bytes());
    }
}

proptest! {
    // Each case compiles twelve policies; fewer cases keep it quick in CI.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The string, time and path functions index into text by code points; no argument,
    /// however odd, may make them panic (they answer or fail closed).
    #[test]
    fn library_functions_never_panic(
        s in "[a-cé©/.*?]{0,6}",
        t in "[a-cé©/.*?]{0,3}",
        i in -3i64..9,
        j in -3i64..9,
        zone in prop_oneof![Just("Europe/Berlin"), Just("+05:30"), Just("02:00"), Just("Nowhere/Else"), Just("")],
        when in "[0-9T:.Z+-]{0,24}",
    ) {
        let q = |x: &str| serde_json::to_string(x).unwrap();
        let (s, t, zone, when) = (q(&s), q(&t), q(zone), q(&when));
        let conditions = [
            format!("{s}.substring({i}, {j}) != ''"),
            format!("{s}.substring({i}) != ''"),
            format!("{s}.charAt({i}) != ''"),
            format!("{s}.indexOf({t}, {i}) > -2"),
            format!("{s}.lastIndexOf({t}, {i}) > -2"),
            format!("size({s}.split({t}, {i})) >= 0"),
            format!("{s}.replace({t}, 'x', {i}) != ''"),
            format!("glob({s}, {t})"),
            format!("now.getHours(context.zone) >= 0 && context.zone == {zone}"),
            format!("timestamp({when}) > now"),
            format!("duration({when}) > duration('0s')"),
            format!("timestamp('2024-01-01T00:00:00Z') + duration('{i}h') > timestamp({j})"),
        ];
        for when in conditions {
            let source = format!(
                "version: 1.0.0\ndefault: allow\nrules:\n  - {{id: r, actions: [\"*\"], effect: deny, when: {}}}\n",
                serde_json::to_string(&when).unwrap()
            );
            if let Ok(policy) = Policy::parse(&source) {
                let a = Action::from_value(json!({"type": "x", "context": {"zone": zone.trim_matches('"')}})).unwrap();
                let _ = policy.evaluate(&a, &env());
            }
        }
    }
}

#[test]
fn deeply_nested_documents_are_refused_not_overflowed() {
    for depth in [100, 1_000, 20_000] {
        let flow = format!(
            "version: 1.0.0\nguidance: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(Policy::parse(&flow).is_err());
        let mut block = String::from("version: 1.0.0\nx:\n");
        for i in 0..depth.min(2_000) {
            block.push_str(&" ".repeat(i + 1));
            block.push_str("a:\n");
        }
        assert!(Policy::parse(&block).is_err());
        let compact = format!("version: 1.0.0\nguidance:\n  {}x\n", "- ".repeat(depth));
        assert!(Policy::parse(&compact).is_err());
        // Compact markers stacked across lines, each line deeper than the last.
        let mut stacked = String::from("version: 1.0.0\nguidance:\n");
        for i in 0..(depth / 10).min(200) {
            stacked.push_str(&" ".repeat(i * 20));
            stacked.push_str(&"- ".repeat(10));
            stacked.push('\n');
        }
        assert!(Policy::parse(&stacked).is_err());
    }
}
