//! Evaluating the compiled tree against one action.
//!
//! Errors follow CEL: `&&` and `||` absorb an error when the other side decides, everything
//! else propagates it, and the caller turns any error into a fail-closed deny.

use super::library;
use super::node::{BinOp, Comprehension, Func, Lit, Node, Root};
use super::schema::{ActionField, FieldValue, Shape};
use super::time;
use super::value::{Val, compare, equal};
use super::{EvalError, ITERATION_BUDGET, Vars, fail};
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;

#[derive(Default)]
pub(super) struct Cx<'a> {
    /// Comprehension variables by slot. An accumulator may hold an error: CEL keeps
    /// iterating, and a later step can still absorb it (`false && error` is false).
    locals: Vec<Result<Val<'a>, EvalError>>,
    budget_used: u32,
    /// List elements copied by `+`. Counted always (one add on a path that allocates
    /// anyway) so the linear-time comprehension test can see copies without a cfg.
    pub copied: usize,
}

#[inline]
fn field_val(f: FieldValue<'_>) -> Val<'_> {
    match f {
        FieldValue::Text(s) => Val::Str(Cow::Borrowed(s)),
        FieldValue::Double(d) => Val::Double(d),
        FieldValue::Int(i) => Val::Int(i),
        FieldValue::Json(v) => Val::from_json(v),
    }
}

impl Root {
    /// The value, or `None` when the action does not carry it.
    #[inline]
    fn get<'a>(self, v: &Vars<'a>) -> Option<Val<'a>> {
        let text = |x: &'a str| Val::Str(Cow::Borrowed(x));
        match self {
            Root::Action => None,
            // Scalars and JSON first: records are rare in conditions, so their shape is only
            // looked up when the field has no value of its own.
            Root::Field(f) => match f.get(v.action) {
                Some(value) => Some(field_val(value)),
                None if f.shape() == Shape::Record && f.present(v.action) => {
                    let entries = ActionField::children(Some(f))
                        .filter_map(|child| {
                            let value = child.get(v.action)?;
                            Some((text(child.name()), field_val(value)))
                        })
                        .collect();
                    Some(Val::Map(Rc::new(entries)))
                }
                None => None,
            },
            Root::Context => ActionField::Context.get(v.action).map(field_val),
            Root::Agent => {
                let mut entries = Vec::new();
                if let Some(id) = v.agent {
                    entries.push((text("id"), text(id)));
                }
                if let Some(tier) = v.tier {
                    entries.push((text("tier"), text(tier)));
                }
                Some(Val::Map(Rc::new(entries)))
            }
            Root::AgentId => v.agent.map(text),
            Root::AgentTier => v.tier.map(text),
            Root::Tenant => Some(text(v.env.tenant.as_str())),
            Root::Now => Some(Val::Timestamp(v.env.now.get())),
        }
    }

    fn present(self, v: &Vars<'_>) -> bool {
        match self {
            Root::Field(f) => f.present(v.action),
            other => other.get(v).is_some(),
        }
    }
}

impl Lit {
    fn val(&self) -> Val<'_> {
        match self {
            Lit::Null => Val::Null,
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Int(i) => Val::Int(*i),
            Lit::UInt(u) => Val::UInt(*u),
            Lit::Double(d) => Val::Double(*d),
            Lit::Str(s) => Val::Str(Cow::Borrowed(s)),
            Lit::Bytes(b) => Val::Bytes(Cow::Borrowed(b)),
            Lit::Type(t) => Val::Type(*t),
            Lit::Timestamp(t) => Val::Timestamp(*t),
            Lit::Duration(d) => Val::Duration(*d),
        }
    }
}

impl Node {
    pub(super) fn eval<'a>(&'a self, cx: &mut Cx<'a>, v: &Vars<'a>) -> Result<Val<'a>, EvalError> {
        match self {
            Node::Lit(lit) => Ok(lit.val()),
            Node::Json(value) => Ok(Val::from_json(value)),
            Node::Path(root, steps) if steps.is_empty() => match root.get(v) {
                Some(val) => Ok(val),
                None => fail(format!("no such key: `{}` is not set", root.name())),
            },
            Node::Path(root, steps) => eval_path(*root, steps, v),
            Node::Present(root) => Ok(Val::Bool(root.present(v))),
            Node::Local(slot) => match cx.locals.get(*slot) {
                Some(val) => val.clone(),
                None => fail("comprehension variable used outside its loop"),
            },
            Node::Select(operand, field) => {
                let base = operand.eval(cx, v)?;
                match base.map_get(&Val::Str(Cow::Borrowed(field)))? {
                    Some(val) => Ok(val),
                    None => fail(format!("no such key `{field}`")),
                }
            }
            Node::Has(operand, field) => {
                let base = operand.eval(cx, v)?;
                Ok(Val::Bool(
                    base.map_get(&Val::Str(Cow::Borrowed(field)))?.is_some(),
                ))
            }
            Node::Index(operand, index) => {
                let base = operand.eval(cx, v)?;
                let key = index.eval(cx, v)?.resolve();
                index_value(&base, &key)
            }
            Node::Not(x) => match x.eval(cx, v)? {
                Val::Bool(b) => Ok(Val::Bool(!b)),
                other => fail(format!("`!` needs a bool, not {}", other.type_name())),
            },
            Node::Neg(x) => match x.eval(cx, v)?.resolve() {
                Val::Int(i) => i
                    .checked_neg()
                    .map(Val::Int)
                    .ok_or_else(|| EvalError("integer overflow".into())),
                Val::Double(d) => Ok(Val::Double(-d)),
                Val::Duration(d) => d
                    .checked_neg()
                    .map(Val::Duration)
                    .ok_or_else(|| EvalError("duration out of range".into())),
                other => fail(format!("cannot negate {}", other.type_name())),
            },
            Node::And(a, b) => logic(cx, v, a, b, false),
            Node::Or(a, b) => logic(cx, v, a, b, true),
            Node::Cond(c, t, f) => match c.eval(cx, v)? {
                Val::Bool(true) => t.eval(cx, v),
                Val::Bool(false) => f.eval(cx, v),
                other => fail(format!(
                    "a conditional needs a bool, not {}",
                    other.type_name()
                )),
            },
            Node::Binary(op, a, b) => {
                let x = a.eval(cx, v)?;
                let y = b.eval(cx, v)?;
                binary(cx, *op, x, y)
            }
            // The string predicates are most of what policies call (the tier presets alone
            // run four `endsWith`); skip the library's general dispatch for them.
            Node::Call(f @ (Func::StartsWith | Func::EndsWith | Func::Contains), args)
                if args.len() == 2 =>
            {
                let (x, y) = (args[0].eval(cx, v)?, args[1].eval(cx, v)?);
                match (&x, &y) {
                    (Val::Str(s), Val::Str(t)) => Ok(Val::Bool(match f {
                        Func::StartsWith => s.starts_with(t.as_ref()),
                        Func::EndsWith => s.ends_with(t.as_ref()),
                        _ => s.contains(t.as_ref()),
                    })),
                    _ => library::call(*f, &[x, y]),
                }
            }
            Node::Call(f, args) => call(cx, v, *f, args),
            Node::Matches(a, re) => match a.eval(cx, v)? {
                Val::Str(s) => Ok(Val::Bool(re.is_match(&s))),
                other => fail(format!(
                    "`matches` needs a string, not {}",
                    other.type_name()
                )),
            },
            Node::TimePart(part, a, tz) => match a.eval(cx, v)? {
                Val::Timestamp(t) => Ok(Val::Int(time::timestamp_part(t, *part, tz.as_deref()))),
                Val::Duration(d) if tz.is_none() => time::duration_part(d, *part).map(Val::Int),
                other => fail(format!(
                    "a time accessor needs a timestamp, not {}",
                    other.type_name()
                )),
            },
            // Turns errors into true, so it must see them rather than propagate them.
            Node::NotStrictlyFalse(a) => {
                Ok(Val::Bool(!matches!(a.eval(cx, v), Ok(Val::Bool(false)))))
            }
            Node::List(items) => list(cx, v, items),
            Node::Map(entries) => map(cx, v, entries),
            Node::Append(slot, items) => append(cx, v, *slot, items),
            Node::Comprehension(c) => c.eval(cx, v),
        }
    }
}

// The rarer nodes are evaluated out of line: their locals (argument arrays, new lists) would
// otherwise enlarge every recursive `eval` frame, which the common conditions pay for.

#[inline(never)]
fn call<'a>(
    cx: &mut Cx<'a>,
    v: &Vars<'a>,
    f: Func,
    args: &'a [Node],
) -> Result<Val<'a>, EvalError> {
    match args {
        [a] => library::call(f, &[a.eval(cx, v)?]),
        [a, b] => library::call(f, &[a.eval(cx, v)?, b.eval(cx, v)?]),
        [a, b, c] => library::call(f, &[a.eval(cx, v)?, b.eval(cx, v)?, c.eval(cx, v)?]),
        [a, b, c, d] => library::call(
            f,
            &[
                a.eval(cx, v)?,
                b.eval(cx, v)?,
                c.eval(cx, v)?,
                d.eval(cx, v)?,
            ],
        ),
        _ => fail("a function was called with the wrong number of arguments"),
    }
}

#[inline(never)]
fn list<'a>(cx: &mut Cx<'a>, v: &Vars<'a>, items: &'a [Node]) -> Result<Val<'a>, EvalError> {
    let values = items
        .iter()
        .map(|n| n.eval(cx, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Val::List(Rc::new(values)))
}

#[inline(never)]
fn map<'a>(
    cx: &mut Cx<'a>,
    v: &Vars<'a>,
    entries: &'a [(Node, Node)],
) -> Result<Val<'a>, EvalError> {
    let mut values: Vec<(Val<'a>, Val<'a>)> = Vec::with_capacity(entries.len());
    for (k, val) in entries {
        let key = k.eval(cx, v)?.resolve();
        if !matches!(key, Val::Str(_) | Val::Int(_) | Val::UInt(_) | Val::Bool(_)) {
            return fail(format!("a map key cannot be {}", key.type_name()));
        }
        if values.iter().any(|(existing, _)| equal(existing, &key)) {
            return fail("a map literal repeats a key");
        }
        values.push((key, val.eval(cx, v)?));
    }
    Ok(Val::Map(Rc::new(values)))
}

#[inline(never)]
fn append<'a>(
    cx: &mut Cx<'a>,
    v: &Vars<'a>,
    slot: usize,
    items: &'a [Node],
) -> Result<Val<'a>, EvalError> {
    let mut new = Vec::with_capacity(items.len());
    for item in items {
        new.push(item.eval(cx, v)?);
    }
    // Taking the accumulator out of its slot leaves its list with one owner, so
    // `make_mut` extends it where it is instead of copying it.
    let accu = match cx.locals.get_mut(slot) {
        Some(local) => std::mem::replace(local, Ok(Val::Null))?,
        None => return fail("comprehension variable used outside its loop"),
    };
    match accu {
        Val::List(mut list) => {
            Rc::make_mut(&mut list).extend(new);
            Ok(Val::List(list))
        }
        other => binary(cx, BinOp::Add, other, Val::List(Rc::new(new))),
    }
}

fn index_value<'a>(base: &Val<'a>, key: &Val<'_>) -> Result<Val<'a>, EvalError> {
    if base.list_len().is_some() {
        let i = match key {
            Val::Int(i) => usize::try_from(*i).ok(),
            Val::UInt(u) => usize::try_from(*u).ok(),
            Val::Double(d) if d.fract() == 0.0 && *d >= 0.0 && *d < 1e18 => Some(*d as usize),
            Val::Double(_) => return fail("a list index must be a whole number"),
            other => {
                return fail(format!(
                    "a list index must be an int, not {}",
                    other.type_name()
                ));
            }
        };
        return match i.and_then(|i| base.list_get(i)) {
            Some(val) => Ok(val),
            None => fail("list index out of range"),
        };
    }
    match base.map_get(key)? {
        Some(val) => Ok(val),
        None => fail("no such key in map"),
    }
}

fn eval_path<'a>(root: Root, steps: &'a [Box<str>], v: &Vars<'a>) -> Result<Val<'a>, EvalError> {
    // JSON roots walk the borrowed document directly: the common case for `context.*` and
    // `action.payload.*`, and allocation-free.
    let json = match root {
        Root::Field(ActionField::Payload) => Some(&v.action.payload),
        Root::Field(ActionField::Context) | Root::Context => Some(&v.action.context),
        _ => None,
    };
    if let Some(mut cur) = json {
        if cur.is_null() && steps.is_empty() {
            return fail(format!("no such key: `{}` is not set", root.name()));
        }
        for step in steps {
            cur = match cur {
                Value::Object(map) => match map.get(step.as_ref()) {
                    Some(next) => next,
                    None => return fail(format!("no such key `{step}` under `{}`", root.name())),
                },
                Value::Null => {
                    return fail(format!(
                        "no such key `{step}`: `{}` is not set",
                        root.name()
                    ));
                }
                other => {
                    return fail(format!(
                        "cannot select `{step}` from {}",
                        Val::from_json(other).type_name()
                    ));
                }
            };
        }
        return Ok(Val::from_json(cur));
    }
    let Some(mut val) = root.get(v) else {
        return fail(format!("no such key: `{}` is not set", root.name()));
    };
    for step in steps {
        val = match val.map_get(&Val::Str(Cow::Borrowed(step)))? {
            Some(next) => next,
            None => return fail(format!("no such key `{step}`")),
        };
    }
    Ok(val)
}

fn logic<'a>(
    cx: &mut Cx<'a>,
    v: &Vars<'a>,
    a: &'a Node,
    b: &'a Node,
    or: bool,
) -> Result<Val<'a>, EvalError> {
    // CEL's commutative logic: the side that decides wins even if the other side errs.
    let decides = |r: &Result<Val<'a>, EvalError>| matches!(r, Ok(Val::Bool(x)) if *x == or);
    let left = a.eval(cx, v);
    if decides(&left) {
        return Ok(Val::Bool(or));
    }
    let right = b.eval(cx, v);
    if decides(&right) {
        return Ok(Val::Bool(or));
    }
    match (left?, right?) {
        (Val::Bool(_), Val::Bool(_)) => Ok(Val::Bool(!or)),
        (x, y) => fail(format!(
            "`{}` needs bools, not {} and {}",
            if or { "||" } else { "&&" },
            x.type_name(),
            y.type_name()
        )),
    }
}

fn no_overload<T>(sym: &str, x: &Val<'_>, y: &Val<'_>) -> Result<T, EvalError> {
    fail(format!(
        "cannot apply `{sym}` to {} and {}",
        x.type_name(),
        y.type_name()
    ))
}

fn binary<'a>(cx: &mut Cx<'a>, op: BinOp, x: Val<'a>, y: Val<'a>) -> Result<Val<'a>, EvalError> {
    let is = |o: Ordering, want: &[Ordering]| want.contains(&o);
    Ok(match op {
        BinOp::Eq => Val::Bool(equal(&x, &y)),
        BinOp::Ne => Val::Bool(!equal(&x, &y)),
        BinOp::Lt => Val::Bool(compare(&x, &y)?.is_some_and(|o| is(o, &[Ordering::Less]))),
        BinOp::Le => {
            Val::Bool(compare(&x, &y)?.is_some_and(|o| is(o, &[Ordering::Less, Ordering::Equal])))
        }
        BinOp::Gt => Val::Bool(compare(&x, &y)?.is_some_and(|o| is(o, &[Ordering::Greater]))),
        BinOp::Ge => Val::Bool(
            compare(&x, &y)?.is_some_and(|o| is(o, &[Ordering::Greater, Ordering::Equal])),
        ),
        BinOp::In => {
            let x = x.resolve();
            if let Some(n) = y.list_len() {
                Val::Bool((0..n).any(|i| y.list_get(i).is_some_and(|e| equal(&x, &e))))
            } else if y.map_len().is_some() {
                Val::Bool(y.map_get(&x)?.is_some())
            } else {
                return fail(format!(
                    "`in` needs a list or map on the right, not {}",
                    y.type_name()
                ));
            }
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
            return arith(cx, op, x, y);
        }
    })
}

fn arith<'a>(cx: &mut Cx<'a>, op: BinOp, x: Val<'a>, y: Val<'a>) -> Result<Val<'a>, EvalError> {
    let sym = match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        _ => "%",
    };
    let overflow = || EvalError("integer overflow".into());
    // A number from the input JSON combines with any numeric kind (see value.rs).
    let lenient = x.is_json_number() || y.is_json_number();
    let (x, y) = (x.resolve(), y.resolve());
    let (x, y) = if lenient { widen(x, y) } else { (x, y) };
    Ok(match (op, &x, &y) {
        (_, Val::Int(a), Val::Int(b)) => Val::Int(
            match op {
                BinOp::Add => a.checked_add(*b),
                BinOp::Sub => a.checked_sub(*b),
                BinOp::Mul => a.checked_mul(*b),
                BinOp::Div if *b == 0 => return fail("division by zero"),
                BinOp::Div => a.checked_div(*b),
                _ if *b == 0 => return fail("modulus by zero"),
                _ => a.checked_rem(*b),
            }
            .ok_or_else(overflow)?,
        ),
        (_, Val::UInt(a), Val::UInt(b)) => Val::UInt(
            match op {
                BinOp::Add => a.checked_add(*b),
                BinOp::Sub => a.checked_sub(*b),
                BinOp::Mul => a.checked_mul(*b),
                BinOp::Div if *b == 0 => return fail("division by zero"),
                BinOp::Div => a.checked_div(*b),
                _ if *b == 0 => return fail("modulus by zero"),
                _ => a.checked_rem(*b),
            }
            .ok_or_else(overflow)?,
        ),
        (BinOp::Rem, Val::Double(_), Val::Double(_)) => return no_overload(sym, &x, &y),
        (_, Val::Double(a), Val::Double(b)) => Val::Double(match op {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            _ => a / b,
        }),
        (BinOp::Add, Val::Str(a), Val::Str(b)) => {
            let mut s = String::with_capacity(a.len() + b.len());
            s.push_str(a);
            s.push_str(b);
            Val::Str(Cow::Owned(s))
        }
        (BinOp::Add, Val::Bytes(a), Val::Bytes(b)) => {
            Val::Bytes(Cow::Owned([&a[..], &b[..]].concat()))
        }
        (BinOp::Add, _, _) if x.list_len().is_some() && y.list_len().is_some() => {
            let mut items =
                Vec::with_capacity(x.list_len().unwrap_or(0) + y.list_len().unwrap_or(0));
            for list in [&x, &y] {
                for i in 0..list.list_len().unwrap_or(0) {
                    items.extend(list.list_get(i));
                }
            }
            cx.copied += items.len();
            Val::List(Rc::new(items))
        }
        (BinOp::Add, Val::Timestamp(t), Val::Duration(d))
        | (BinOp::Add, Val::Duration(d), Val::Timestamp(t)) => {
            Val::Timestamp(time::check_timestamp(
                t.checked_add(*d)
                    .map_err(|_| EvalError("timestamp out of range".into()))?,
            )?)
        }
        (BinOp::Sub, Val::Timestamp(t), Val::Duration(d)) => Val::Timestamp(time::check_timestamp(
            t.checked_sub(*d)
                .map_err(|_| EvalError("timestamp out of range".into()))?,
        )?),
        (BinOp::Sub, Val::Timestamp(a), Val::Timestamp(b)) => {
            Val::Duration(time::check_duration(a.duration_since(*b))?)
        }
        (BinOp::Add | BinOp::Sub, Val::Duration(a), Val::Duration(b)) => {
            let sum = if op == BinOp::Add {
                a.checked_add(*b)
            } else {
                a.checked_sub(*b)
            };
            Val::Duration(time::check_duration(
                sum.ok_or_else(|| EvalError("duration out of range".into()))?,
            )?)
        }
        _ => return no_overload(sym, &x, &y),
    })
}

/// Brings two numbers of different kinds to one: both doubles if either is, else both ints
/// (or both uints where an int would not hold the value).
fn widen<'a>(x: Val<'a>, y: Val<'a>) -> (Val<'a>, Val<'a>) {
    match (&x, &y) {
        (Val::Double(_), Val::Int(_) | Val::UInt(_))
        | (Val::Int(_) | Val::UInt(_), Val::Double(_)) => {
            let d = |v: &Val<'_>| match v {
                Val::Int(i) => *i as f64,
                Val::UInt(u) => *u as f64,
                Val::Double(d) => *d,
                _ => f64::NAN,
            };
            (Val::Double(d(&x)), Val::Double(d(&y)))
        }
        (Val::Int(i), Val::UInt(u)) | (Val::UInt(u), Val::Int(i)) => {
            match (i64::try_from(*u), u64::try_from(*i)) {
                (Ok(u), _) => {
                    let swap = matches!(x, Val::UInt(_));
                    if swap {
                        (Val::Int(u), Val::Int(*i))
                    } else {
                        (Val::Int(*i), Val::Int(u))
                    }
                }
                (Err(_), Ok(i2)) => {
                    let swap = matches!(x, Val::UInt(_));
                    if swap {
                        (Val::UInt(*u), Val::UInt(i2))
                    } else {
                        (Val::UInt(i2), Val::UInt(*u))
                    }
                }
                _ => (x.clone(), y.clone()),
            }
        }
        _ => (x, y),
    }
}

impl Comprehension {
    fn eval<'a>(&'a self, cx: &mut Cx<'a>, v: &Vars<'a>) -> Result<Val<'a>, EvalError> {
        let range = self.range.eval(cx, v)?;
        let items: Vec<Val<'a>> = if let Some(n) = range.list_len() {
            (0..n).filter_map(|i| range.list_get(i)).collect()
        } else if range.map_len().is_some() {
            range.map_keys()
        } else {
            return fail(format!("cannot iterate over {}", range.type_name()));
        };
        let accu = self.init.eval(cx, v)?;
        if cx.locals.len() < self.accu_slot + 1 {
            cx.locals.resize(self.accu_slot + 1, Ok(Val::Null));
        }
        cx.locals[self.accu_slot] = Ok(accu);
        for item in items {
            cx.budget_used += 1;
            if cx.budget_used > ITERATION_BUDGET {
                return fail(format!(
                    "condition exceeded its cost limit of {ITERATION_BUDGET} iterations"
                ));
            }
            cx.locals[self.iter_slot] = Ok(item);
            match self.cond.eval(cx, v)? {
                Val::Bool(true) => {}
                Val::Bool(false) => break,
                other => return fail(format!("loop condition evaluated to {}", other.type_name())),
            }
            let next = self.step.eval(cx, v);
            cx.locals[self.accu_slot] = next;
        }
        let result = self.result.eval(cx, v);
        cx.locals.truncate(self.iter_slot);
        result
    }
}
