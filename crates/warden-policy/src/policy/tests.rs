//! What `tests/policies/*_test.yaml` cannot say: the order of reasons, failure details,
//! approval merging, error positions and the parsed sections.

use super::*;
use crate::action::{Action, Env, Timestamp};
use crate::decision::{Decision, ReasonCode};
use serde_json::json;
use std::time::Duration;

/// What a decision looked like, in the terms a policy author thinks in.
#[derive(Debug, PartialEq)]
struct Seen {
    verdict: &'static str,
    deciding: Vec<String>,
    reasons: Vec<String>,
}

fn seen(d: &Decision) -> Seen {
    Seen {
        verdict: d.verdict.as_str(),
        deciding: d.deciding_rules().map(|r| r.as_str().to_owned()).collect(),
        reasons: d
            .reasons
            .iter()
            .map(|r| r.rule.as_ref().map_or("-", |r| r.as_str()).to_owned())
            .collect(),
    }
}

fn decide(policy: &str, action: serde_json::Value) -> Decision {
    let policy = Policy::parse(policy).unwrap_or_else(|e| panic!("policy does not parse:\n{e}"));
    let action = Action::from_value(action).unwrap();
    policy.evaluate(
        &action,
        &Env::new("acme", Timestamp::from_unix_seconds(1_700_000_000).unwrap()),
    )
}

/// Runs a table of (action, verdict, deciding rules, every reason's rule in order).
fn check(policy: &str, table: &[(serde_json::Value, &'static str, &[&str], &[&str])]) {
    for (action, verdict, deciding, reasons) in table {
        let d = decide(policy, action.clone());
        let expected = Seen {
            verdict,
            deciding: deciding.iter().map(|s| s.to_string()).collect(),
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(seen(&d), expected, "action {action}");
    }
}

const COMBINING: &str = r#"
version: 1.0.0
default: deny
rules:
  - {id: allow-all, actions: ["*"], effect: allow}
  - {id: hold-big, actions: [pay.send], when: action.payload.amount > 100, effect: require_approval, approval: {approvers: [finance]}}
  - {id: block-huge, actions: [pay.send], when: action.payload.amount > 1000, effect: deny}
  - {id: draft-it, actions: ["pay.*"], effect: modify, set: {mode: draft, limits: {tokens: 50}}}
  - {id: cap-it, actions: ["pay.*"], effect: modify, set: {mode: sandbox, limits: {tokens: 10, tool_calls: 3}}}
"#;

#[test]
fn deny_beats_approval_beats_allow_and_reasons_come_strongest_first() {
    check(
        COMBINING,
        &[
            (
                json!({"type": "pay.send", "payload": {"amount": 5}}),
                "allow",
                &["allow-all"],
                &["allow-all", "draft-it", "cap-it"],
            ),
            (
                json!({"type": "pay.send", "payload": {"amount": 500}}),
                "require_approval",
                &["hold-big"],
                &["hold-big", "allow-all", "draft-it", "cap-it"],
            ),
            (
                json!({"type": "pay.send", "payload": {"amount": 5000}}),
                "deny",
                &["block-huge"],
                &["block-huge", "hold-big", "allow-all", "draft-it", "cap-it"],
            ),
            (
                json!({"type": "other.thing"}),
                "allow",
                &["allow-all"],
                &["allow-all"],
            ),
        ],
    );
}

#[test]
fn the_default_applies_when_no_rule_decides() {
    let only_modify = "version: 1.0.0\ndefault: allow\nrules:\n  - {id: m, actions: [a], effect: modify, set: {mode: draft}}\n";
    let d = decide(only_modify, json!({"type": "a"}));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.obligations.mode.as_deref(),
        Some("draft"),
        "modify still applies to a default allow"
    );
    assert_eq!(
        d.reasons[0].code,
        ReasonCode::DefaultEffect,
        "the reason that decides comes first"
    );
    assert_eq!(d.reasons[1].rule.as_ref().map(RuleId::as_str), Some("m"));
    let d = decide("version: 1.0.0\n", json!({"type": "a"}));
    assert_eq!(d.verdict, Verdict::Deny, "an omitted default is deny");
    assert_eq!(
        d.reasons[0].message,
        "no rule decides `a`, so the policy default (deny) applies"
    );
}

#[test]
fn an_evaluation_error_denies_with_a_safe_message_and_an_internal_detail() {
    let policy = r#"
version: 1.0.0
default: allow
rules:
  - {id: allow-all, actions: ["*"], effect: allow}
  - {id: secret-check, actions: [x], when: context.user.email.endsWith('@corp.com'), effect: deny}
"#;
    let d = decide(policy, json!({"type": "x", "context": {"user": {}}}));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reasons.len(), 1);
    assert_eq!(d.reasons[0].code, ReasonCode::EvaluationError);
    assert!(
        !d.reasons[0].message.contains("email"),
        "{}",
        d.reasons[0].message
    );
    let failure = d.failure.unwrap();
    assert_eq!(failure.rule.as_str(), "secret-check");
    assert!(failure.detail.contains("email"), "{}", failure.detail);
    // A condition that exceeds its cost limit fails closed the same way.
    let costly = "version: 1.0.0\ndefault: allow\nrules:\n  - id: slow\n    actions: [x]\n    effect: deny\n    when: \"[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, a < 0))))\"\n";
    let cheap = decide(costly, json!({"type": "x"}));
    assert_eq!(
        (cheap.verdict, cheap.reasons[0].code),
        (Verdict::Allow, ReasonCode::DefaultEffect),
        "all() stops at the first false"
    );
    let costly = costly.replace("a < 0", "a > 0");
    let d = decide(&costly, json!({"type": "x"}));
    assert_eq!(
        (d.verdict, d.reasons[0].code),
        (Verdict::Deny, ReasonCode::EvaluationError)
    );
    assert!(d.failure.unwrap().detail.contains("cost limit"));
}

/// Regression: `int()` and `double()` of a non-numeric string put the string itself in
/// the failure detail, which the server logs — a card number in a payload reached the log.
#[test]
fn failure_details_never_carry_input_values() {
    let secret = "4111 1111 1111 1111";
    for when in [
        "int(action.payload.card) > 0",
        "double(action.payload.card) > 0.0",
        "action.payload.card > 5",
        "action.payload.card.nope == 1",
    ] {
        let policy = format!(
            "version: 1.0.0\ndefault: allow\nrules:\n  - {{id: r, actions: [x], effect: deny, when: '{when}'}}\n"
        );
        let d = decide(&policy, json!({"type": "x", "payload": {"card": secret}}));
        assert_eq!(d.reasons[0].code, ReasonCode::EvaluationError, "{when}");
        let detail = d.failure.unwrap().detail;
        assert!(!detail.contains("4111"), "{when}: {detail}");
    }
}

#[test]
fn a_tiers_section_replaces_the_preset() {
    let policy = r#"
version: 1.0.0
agents: {"bot-*": {tier: observe}, "other-*": {tier: draft}}
tiers:
  observe:
    rules:
      - {id: observe-no-email, actions: [email.send], effect: deny, reason: observers never email}
rules:
  - {id: grant, actions: ["*"], effect: allow}
  - {id: drafts-need-review, actions: [doc.publish], tiers: [draft], effect: require_approval}
"#;
    let p = Policy::parse(policy).unwrap();
    assert!(p.rules().iter().all(|r| r.id().as_str() != "tier-observe"));
    assert_eq!(p.tier_of("bot-9"), Some(Tier::Observe));
    assert_eq!(p.tier_of("nobody"), None);
}

#[test]
fn approvals_merge_to_the_strictest_requirement() {
    let policy = r#"
version: 1.0.0
rules:
  - {id: a, actions: [x], effect: require_approval, approval: {approvers: [legal], expires_in: 4h}}
  - {id: b, actions: [x], effect: require_approval, approval: {approvers: [legal, finance], quorum: 2, expires_in: 30m}}
  - {id: c, actions: [y], effect: require_approval}
"#;
    let d = decide(policy, json!({"type": "x"}));
    let a = d.approval.unwrap();
    assert_eq!(
        a.approvers,
        vec!["legal".to_string(), "finance".to_string()]
    );
    assert_eq!((a.quorum, a.expires_in), (2, Duration::from_secs(1800)));
    assert_eq!(
        decide(policy, json!({"type": "y"})).approval.unwrap(),
        ApprovalRequirement::default()
    );
}

#[test]
fn permits_take_the_strictest_settings_of_the_deciding_rules() {
    let policy = r#"
version: 1.0.0
rules:
  - {id: a, actions: [x], effect: allow, permit: {expires_in: 1h, max_uses: 3}}
  - {id: b, actions: [x], effect: allow, permit: {expires_in: 30s}}
  - {id: c, actions: [y], effect: allow}
  - {id: d, actions: [z], effect: require_approval}
  - {id: e, actions: [w], effect: require_approval, permit: {expires_in: 10m, max_uses: 2}}
  - {id: f, actions: [w], effect: allow, permit: {expires_in: 1s}}
"#;
    let permit = decide(policy, json!({"type": "x"})).permit.unwrap();
    assert_eq!(
        (permit.expires_in, permit.max_uses),
        (Duration::from_secs(30), 1),
        "b's expiry, and b's default single use"
    );
    assert_eq!(
        decide(policy, json!({"type": "y"})).permit,
        Some(PermitSettings::default())
    );
    // A require_approval carries the permit its approval will issue: its own rules'
    // settings, not those of an allow it overrides.
    assert_eq!(
        decide(policy, json!({"type": "z"})).permit,
        Some(PermitSettings::default())
    );
    let held = decide(policy, json!({"type": "w"})).permit.unwrap();
    assert_eq!(
        (held.expires_in, held.max_uses),
        (Duration::from_secs(600), 2)
    );
    assert_eq!(decide(policy, json!({"type": "nothing"})).permit, None);
    let default = PermitSettings::default();
    assert_eq!(
        (default.expires_in, default.max_uses),
        (Duration::from_secs(300), 1)
    );
}

#[test]
fn reasons_render_templates_and_show_holes_they_cannot_fill() {
    let policy = r#"
version: 1.0.0
rules:
  - id: r
    actions: [x]
    effect: deny
    reason: "{{agent.id}} asked for {{action.payload.amount * 2}} on {{action.target.id}} ({{context.user.email}})"
"#;
    let d = decide(
        policy,
        json!({"type": "x", "agent": "bot", "payload": {"amount": 21}, "target": {"id": "T-1"}}),
    );
    assert_eq!(
        d.reasons[0].message,
        "bot asked for 42 on T-1 ({{context.user.email}})"
    );
    let d = decide(
        "version: 1.0.0\nrules:\n  - {id: plain, actions: [x], effect: deny}\n",
        json!({"type": "x"}),
    );
    assert_eq!(d.reasons[0].message, "rule `plain` denies `x`");
}

#[test]
fn policy_errors_carry_positions() {
    let table: &[(&str, &str)] = &[
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: alow}\n",
            "3:35: unknown effect `alow`",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], efect: deny}\n",
            "3:27: unknown field `efect`",
        ),
        (
            "version: x\n",
            "1:10: version `x` is not a semantic version",
        ),
        (
            "version: 1.0.0\non_error: allow\n",
            "2:11: on_error `allow` is not allowed",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: allow, approval: {approvers: [l]}}\n",
            "`approval` is only allowed on require_approval rules",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: deny, permit: {max_uses: 2}}\n",
            "3:49: `permit` is only allowed on allow and require_approval rules, not deny",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: allow, permit: {max_uses: 0}}\n",
            "permit.max_uses 0 is outside 1 to 1000",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: allow, permit: {expires_in: 2d}}\n",
            "permit.expires_in `2d` is outside 1s to 24h",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: allow, permit: {uses: 2}}\n",
            "unknown field `uses`",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: deny, when: 'nope > 1'}\n",
            "unknown variable `nope`",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: tier-x, actions: [x], effect: deny}\n",
            "reserved for tier presets",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, effect: deny}\n",
            "rule `a` needs `actions`",
        ),
        (
            "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: deny, confidence_adjustment: 2}\n",
            "outside [-1, 1]",
        ),
        (
            "version: 1.0.0\nbudgets:\n  - {id: b, per: week, limits: {tokens: 5}}\n",
            "unknown `per` value `week`",
        ),
        (
            "version: 1.0.0\nbudgets:\n  - {id: b, per: run, limits: {coins: 5}}\n",
            "unknown limit `coins`",
        ),
        (
            "version: 1.0.0\nrate_limits:\n  - {id: r, actions: [x], per: tenant, limit: 5, window: soon}\n",
            "not a duration",
        ),
        (
            "version: 1.0.0\naudit: {keep: [payload.card]}\n",
            "must be a dotted path under `action.` or `context.`",
        ),
        (
            "version: 1.0.0\nproposals: maybe\n",
            "proposals must be `on` or `off`",
        ),
        ("", "the document is empty"),
        ("- 1\n- 2\n", "1:1: the document must be a mapping"),
    ];
    for (source, expected) in table {
        let errors = Policy::parse(source).unwrap_err().to_string();
        assert!(
            errors.contains(expected),
            "{source:?}: {errors} should contain {expected}"
        );
    }
}

#[test]
fn json_policies_parse_like_yaml() {
    let json = r#"{"version": "2.1.0", "default": "allow",
                       "rules": [{"id": "no-x", "actions": ["x"], "effect": "deny", "confidence_adjustment": -0.2}]}"#;
    let p = Policy::parse(json).unwrap();
    assert_eq!(p.version().parts(), (2, 1, 0));
    assert_eq!(p.rules()[0].confidence_adjustment(), -0.2);
    assert_eq!(
        p.evaluate(
            &Action::from_value(json!({"type": "x"})).unwrap(),
            &Env::default()
        )
        .verdict,
        Verdict::Deny
    );
}

#[test]
fn versions_are_semver() {
    for ok in ["1.0.0", "0.10.2", "1.2.3-rc.1"] {
        assert!(Version::parse(ok).is_some(), "{ok}");
    }
    for bad in ["1.0", "1.0.0.0", "01.0.0", "a.b.c", "1.0.0-", ""] {
        assert!(Version::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn budgets_rate_limits_and_audit_are_parsed_for_the_server() {
    let p = Policy::parse(
        r#"
version: 1.0.0
budgets:
  - {id: per-run, per: run, limits: {tool_calls: 200, tokens: 500000, cost_usd: 5, duration: 30m}}
rate_limits:
  - {id: email-burst, actions: [email.send], per: tenant, limit: 100, window: 1h}
audit: {keep: [action.target.id], redact: [context.user.email]}
proposals: off
"#,
    )
    .unwrap();
    let b = &p.budgets()[0];
    assert_eq!(
        (b.per, b.limits.tool_calls, b.limits.cost_usd),
        (Per::Run, Some(200), Some(5.0))
    );
    assert_eq!(b.limits.duration, Some(Duration::from_secs(1800)));
    let r = &p.rate_limits()[0];
    assert_eq!((r.limit, r.window), (100, Duration::from_secs(3600)));
    assert_eq!(p.audit().redact(), ["context.user.email".to_string()]);
    assert!(!p.proposals_enabled());
}

/// Tier presets go through the same validator as user rules; each must compile, with
/// and without production patterns.
#[test]
fn every_preset_compiles() {
    for production in [&[][..], &[Glob::new("deploy.*")][..]] {
        for tier in Tier::ALL {
            let mut c = super::compile::Checker::default();
            let rules = c.preset(tier, production);
            assert!(c.errors.is_empty(), "{tier:?}: {:?}", c.errors);
            let expected = super::presets::document(tier, production).is_some();
            assert_eq!(rules.len(), usize::from(expected), "{tier:?}");
        }
    }
}

#[test]
fn a_version_compiled_like_the_previous_one_decides_as_if_compiled_alone() {
    let before = Policy::parse(
        "version: 1.0.0\nrules:\n  - {id: low, actions: [t.a], when: 'action.confidence < 0.85', effect: deny}\n  - {id: any, actions: ['t.*'], effect: allow}\n",
    )
    .unwrap();
    // The same condition text is reused; a changed one is compiled anew.
    let after_source = "version: 1.0.1\nrules:\n  - {id: low, actions: [t.a], when: 'action.confidence < 0.5', effect: deny}\n  - {id: also, actions: [t.b], when: 'action.confidence < 0.85', effect: deny}\n  - {id: any, actions: ['t.*'], effect: allow}\n";
    let like = Policy::parse_like(after_source, &before).unwrap();
    let alone = Policy::parse(after_source).unwrap();
    for (ty, c) in [("t.a", 0.7), ("t.a", 0.3), ("t.b", 0.7), ("t.b", 0.9)] {
        let action = Action::from_value(serde_json::json!({"type": ty, "confidence": c})).unwrap();
        let env = Env::default();
        assert_eq!(
            like.evaluate(&action, &env).verdict,
            alone.evaluate(&action, &env).verdict,
            "{ty} at {c}"
        );
    }
    let t_a = Action::from_value(serde_json::json!({"type": "t.a", "confidence": 0.7})).unwrap();
    assert_eq!(like.evaluate(&t_a, &Env::default()).verdict, Verdict::Allow);
}
