//! A second opinion on every answer: generated conditions and inputs within the subset both
//! implement, evaluated by our compiled evaluator and by the `cel` crate's interpreter, must
//! give the same value or both fail. The corpus is small enough for CI; raise
//! PROPTEST_CASES locally to dig deeper.

use super::Vars;
use super::conformance::Plain;
use super::eval::Cx;
use crate::action::{Action, Env};
use proptest::prelude::*;
use serde_json::{Value, json};

fn cel_plain(v: &cel::Value) -> Option<Plain> {
    use cel::Value as V;
    Some(match v {
        V::Null => Plain::Null,
        V::Bool(b) => Plain::Bool(*b),
        V::Int(i) => Plain::Int(*i),
        V::UInt(u) => Plain::UInt(*u),
        V::Float(f) => Plain::Double(*f),
        V::String(s) => Plain::Str(s.to_string()),
        V::Bytes(b) => Plain::Bytes(b.to_vec()),
        V::List(items) => Plain::List(items.iter().map(cel_plain).collect::<Option<_>>()?),
        V::Map(m) => Plain::Map(
            m.map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        cel::objects::Key::Int(i) => Plain::Int(*i),
                        cel::objects::Key::Uint(u) => Plain::UInt(*u),
                        cel::objects::Key::Bool(b) => Plain::Bool(*b),
                        cel::objects::Key::String(s) => Plain::Str(s.to_string()),
                    };
                    Some((key, cel_plain(v)?))
                })
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

/// JSON for the interpreter with every integer an int: serde would hand it non-negative
/// numbers as uints, where our evaluator (like CEL over JSON) sees ints.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(std::sync::Arc::new(s.clone())),
        Value::Array(items) => {
            cel::Value::List(std::sync::Arc::new(items.iter().map(to_cel).collect()))
        }
        Value::Object(map) => cel::Value::Map(cel::objects::Map {
            map: std::sync::Arc::new(
                map.iter()
                    .map(|(k, v)| {
                        (
                            cel::objects::Key::String(std::sync::Arc::new(k.clone())),
                            to_cel(v),
                        )
                    })
                    .collect(),
            ),
        }),
    }
}

fn ours(source: &str, context: &Value) -> Option<Plain> {
    let expr = super::Expr::compile(source).ok()?;
    let action = Action::from_value(json!({"type": "oracle.test", "context": context})).ok()?;
    let env = Env::default();
    let vars = Vars {
        action: &action,
        agent: None,
        tier: None,
        env: &env,
    };
    let mut cx = Cx::default();
    expr.node
        .eval(&mut cx, &vars)
        .ok()
        .map(|v| super::conformance::plain(&v))
}

fn interpreter(source: &str, context: &Value) -> Result<Option<Plain>, ()> {
    let program = cel::Program::compile(source).map_err(|_| ())?;
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("context", to_cel(context));
    match program.execute(&ctx) {
        Ok(v) => cel_plain(&v).map(Some).ok_or(()),
        Err(_) => Ok(None),
    }
}

/// Ints, strings, bools and lists of ints: no doubles, so JSON numbers (which we let
/// combine with doubles) cannot reach an operation the interpreter refuses.
fn input() -> impl Strategy<Value = Value> {
    (
        -20i64..20,
        -20i64..20,
        "[a-c]{0,3}",
        "[a-c]{0,3}",
        any::<bool>(),
        prop::collection::vec(-5i64..5, 0..5),
    )
        .prop_map(|(a, b, s, t, f, l)| json!({"a": a, "b": b, "s": s, "t": t, "f": f, "l": l}))
}

fn int_expr() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        (-9i64..10).prop_map(|n| n.to_string()),
        Just("context.a".to_string()),
        Just("context.b".to_string()),
        Just("size(context.s)".to_string()),
        Just("size(context.l)".to_string()),
        Just("context.l[0]".to_string()),
    ];
    atom.prop_recursive(3, 12, 2, |inner| {
        let op = prop_oneof![Just("+"), Just("-"), Just("*"), Just("/"), Just("%")];
        prop_oneof![
            (inner.clone(), op, inner.clone()).prop_map(|(a, o, b)| format!("({a} {o} {b})")),
            (bool_expr_leaf(), inner.clone(), inner)
                .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
        ]
    })
}

fn bool_expr_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("context.f".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("context.s.startsWith(context.t)".to_string()),
        Just("context.s.contains('a')".to_string()),
        Just("context.s == context.t".to_string()),
        Just("context.s < context.t".to_string()),
        Just("has(context.a)".to_string()),
        Just("has(context.z)".to_string()),
        Just("context.z == 1".to_string()),
        Just("context.s + context.t == 'ab'".to_string()),
        Just("size(context.s + context.t) > 2".to_string()),
        Just("context.s in ['a', 'b', 'ab']".to_string()),
        Just("'a' in {'a': 1, 'b': 2}".to_string()),
        Just("{'k': context.a}['k'] == context.a".to_string()),
        Just("{'k': context.a}.k == context.b".to_string()),
        Just("[context.a, context.b][1] == context.b".to_string()),
        Just("context.l + [context.a] == [context.a]".to_string()),
        Just("context.l == []".to_string()),
        Just("string(context.a) == '1'".to_string()),
        Just("int(string(context.a)) == context.a".to_string()),
        Just("context.f == !context.f".to_string()),
        Just("context.s.endsWith(context.t)".to_string()),
    ]
}

fn bool_expr() -> impl Strategy<Value = String> {
    let cmp = prop_oneof![
        Just("=="),
        Just("!="),
        Just("<"),
        Just("<="),
        Just(">"),
        Just(">=")
    ];
    let leaf = prop_oneof![
        bool_expr_leaf(),
        (int_expr(), cmp, int_expr()).prop_map(|(a, o, b)| format!("{a} {o} {b}")),
        int_expr().prop_map(|a| format!("{a} in context.l")),
        int_expr().prop_map(|a| format!("context.l.exists(x, x > {a})")),
        int_expr().prop_map(|a| format!("context.l.all(x, x != {a})")),
        int_expr().prop_map(|a| format!("context.l.exists_one(x, x == {a})")),
        int_expr().prop_map(|a| format!("context.l.map(x, x * 2).filter(y, y > {a}) == []")),
        int_expr().prop_map(|a| format!("size(context.l.filter(x, x % 2 == 0)) == {a}")),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            inner.prop_map(|a| format!("!({a})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn our_evaluator_agrees_with_the_cel_interpreter(source in bool_expr(), context in input()) {
        // Both refuse or fail: agreement. The interpreter refusing a value we cannot
        // convert would be a gap in this test, not a disagreement, so it must not happen.
        let theirs = interpreter(&source, &context);
        prop_assert!(theirs.is_ok(), "the interpreter could not run `{}`", source);
        let mine = ours(&source, &context);
        prop_assert_eq!(mine, theirs.unwrap_or_default(), "`{}` over {}", source, context);
    }

    #[test]
    fn integer_arithmetic_agrees_too(source in int_expr(), context in input()) {
        let theirs = interpreter(&source, &context);
        prop_assert!(theirs.is_ok(), "the interpreter could not run `{}`", source);
        prop_assert_eq!(ours(&source, &context), theirs.unwrap_or_default(), "`{}` over {}", source, context);
    }
}
