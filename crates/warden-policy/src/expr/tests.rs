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
        (
            "now.getHours('Mars/Olympus') > 1",
            "unknown time zone `Mars/Olympus`",
        ),
        (
            "now > timestamp('yesterday')",
            "is not an RFC 3339 timestamp",
        ),
        ("duration('1 hour') > duration('1h')", "is not a duration"),
        ("action.type.x == 1", "`action.type` is a single value"),
        (
            "action.target.name == 'x'",
            "`action.target` has no field `name`",
        ),
        ("'a'.split()", "does not take 0 arguments"),
        ("sets.union([1], [2])", "unknown function `sets.union`"),
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

/// Every node is as large as its largest variant, and the evaluator walks nodes on every
/// decision: a large variant (a JSON value is 72 bytes) belongs behind a box.
#[test]
fn the_tree_and_its_values_stay_small() {
    assert!(std::mem::size_of::<node::Node>() <= 32);
    assert!(std::mem::size_of::<value::Val<'_>>() <= 32);
}
