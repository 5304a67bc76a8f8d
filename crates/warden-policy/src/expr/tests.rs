//! Unit tests of the CEL compiler and evaluator that need its internals; behaviour tables
//! live in `tests/cel/*_test.yaml`.

use super::*;
use crate::action::Action;
use serde_json::json;

fn action() -> Action {
    Action::from_value(json!({
            "type": "ticket.resolve",
            "target": {"type": "ticket", "id": "T-1042"},
            "confidence": 0.82,
            "mode": "auto",
            "agent": "support-bot",
            "payload": {"resolution": "refund issued", "external": false, "amount": 120, "items": [1, 2, 3]},
            "context": {"ticket": {"flags": ["legal_sensitive"], "priority": "high"}, "user": {"role": "restricted"}},
            "usage": {"tokens": 1200, "cost_usd": 0.004, "tool_calls": 1}
        }))
        .unwrap()
}

/// Evaluates `source` against the sample action: `Ok(bool)` or the error text.
fn check(source: &str) -> Result<bool, String> {
    let a = action();
    let env = Env::new(
        "acme",
        crate::action::Timestamp::from_unix_seconds(1_700_000_000).unwrap(),
    );
    let vars = Vars {
        action: &a,
        agent: Some("support-bot"),
        tier: Some("draft"),
        env: &env,
    };
    let expr = Expr::compile(source).map_err(|e| format!("compile: {e}"))?;
    expr.eval_bool(&vars).map_err(|e| e.to_string())
}

#[test]
fn conditions_evaluate_like_cel() {
    let table = [
        ("action.confidence < 0.85", true),
        ("action.confidence >= 0.82", true),
        ("action.type == 'ticket.resolve'", true),
        ("action.type.startsWith('ticket.')", true),
        (
            "action.target.id == 'T-1042' && action.target.type == 'ticket'",
            true,
        ),
        ("'legal_sensitive' in context.ticket.flags", true),
        ("'other' in context.ticket.flags", false),
        (
            "context.user.role == 'restricted' && action.payload.external == true",
            false,
        ),
        ("action.payload.amount > 100", true),
        ("action.payload.amount > 100.5", true),
        ("action.payload.amount == 120.0", true),
        ("action.payload.amount + 0.5 > 120", true),
        ("action.usage.tokens > 1000u", true),
        ("action.usage.tokens > 1000", true),
        ("action.usage.cost_usd < 0.01", true),
        ("agent.tier == 'draft' && agent.id.endsWith('-bot')", true),
        ("tenant == 'acme'", true),
        ("now > timestamp('2020-09-13T12:26:40Z')", true),
        ("int(now) == 1700000000", true),
        ("has(action.payload.external)", true),
        ("has(action.payload.missing)", false),
        ("has(action.confidence)", true),
        ("has(action.run_id)", false),
        ("has(action.target.id)", true),
        ("has(agent.tier)", true),
        (
            "size(action.payload.items) == 3 && action.payload.items.size() == 3",
            true,
        ),
        ("action.payload.items.all(i, i > 0)", true),
        ("action.payload.items.exists(i, i == 2)", true),
        ("action.payload.items.exists_one(i, i > 2)", true),
        ("action.payload.items.map(i, i * 2)[2] == 6", true),
        ("action.payload.items.filter(i, i > 1) == [2, 3]", true),
        ("context.ticket.priority in ['high', 'urgent']", true),
        ("'priority' in context.ticket", true),
        ("action.payload.resolution.matches('^refund')", true),
        ("action.mode == 'draft' ? false : true", true),
        ("!(action.confidence > 0.9)", true),
        ("action.payload.items[0] == 1", true),
        ("context['user']['role'] == 'restricted'", true),
        ("{'a': 1}.a == 1", true),
        ("[action.type, 'x'][0] == 'ticket.resolve'", true),
        ("1 == 'a'", false),
        (
            "action.payload.resolution.lowerAscii() == 'refund issued'",
            true,
        ),
        (
            "int('42') == 42 && double(1) == 1.0 && string(7) == '7'",
            true,
        ),
        // An error on one side is absorbed when the other side decides.
        ("context.missing.x == 1 || true", true),
        ("false && context.missing.x == 1", false),
    ];
    for (source, expected) in table {
        assert_eq!(check(source), Ok(expected), "{source}");
    }
}

#[test]
fn runtime_errors_are_errors_not_false() {
    let table = [
        ("context.missing == 1", "no such key `missing`"),
        ("action.payload.amount.x == 1", "cannot select `x` from int"),
        ("action.run_id == 'r'", "`action.run_id` is not set"),
        ("action.type < 3", "cannot compare string with int"),
        ("action.payload.amount / 0 == 1", "division by zero"),
        ("9223372036854775807 + 1 > 0", "integer overflow"),
        ("action.type", "not a bool"),
        ("context.missing.x == 1 && true", "no such key"),
        ("action.payload.items[9] == 1", "out of range"),
    ];
    for (source, expected) in table {
        let err = check(source).unwrap_err();
        assert!(
            err.contains(expected),
            "{source}: {err} should contain {expected}"
        );
    }
}

#[test]
fn compile_errors_name_the_problem() {
    let table = [
        ("actoin.type == 'x'", "unknown variable `actoin`"),
        ("action == 1", "`action` must be followed by a field"),
        ("action.colour == 1", "`action` has no field `colour`"),
        ("agent.name == 'x'", "`agent` has no field `name`"),
        ("action.type ==", "is not valid CEL"),
        ("foo(1)", "unknown function `foo`"),
        ("action.type.matches(context.re)", "string literal pattern"),
        ("action.type.matches('(')", "invalid regular expression"),
    ];
    for (source, expected) in table {
        let err = check(source).unwrap_err();
        assert!(
            err.contains(expected),
            "{source}: {err} should contain {expected}"
        );
    }
}

#[test]
fn comprehensions_have_a_cost_limit() {
    let err = check("[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, a + b + c + d > 0))))").unwrap_err();
    assert!(err.contains("cost limit"), "{err}");
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
    assert!(check(&deep).unwrap_err().contains("nests"));
    let long = vec!["1"; 500].join(" + ") + " > 0";
    assert!(check(&long).unwrap_err().contains("nests"));
}

/// Regression (issue 8, item 8): `map` and `filter` appended with `accu + [x]`, copying
/// the accumulated list on every step (quadratic). The step now appends in place.
#[test]
fn map_and_filter_build_their_result_in_linear_time() {
    let items: Vec<i64> = (0..5_000).collect();
    let a = Action::from_value(json!({"type": "t", "payload": {"items": items}})).unwrap();
    let env = Env::default();
    let vars = Vars {
        action: &a,
        agent: None,
        tier: None,
        env: &env,
    };
    for source in [
        "action.payload.items.map(i, i * 2)",
        "action.payload.items.filter(i, i % 2 == 0)",
        "action.payload.items.map(i, [i])",
    ] {
        let expr = Expr::compile(source).unwrap();
        let mut cx = eval::Cx::default();
        let value = expr.node.eval(&mut cx, &vars).unwrap();
        assert!(value.list_len().unwrap() >= 2_500, "{source}");
        assert!(
            cx.copied < 10,
            "{source}: {} list elements copied",
            cx.copied
        );
    }
}
