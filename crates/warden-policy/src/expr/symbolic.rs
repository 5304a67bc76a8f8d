//! The compiled tree as Z3 terms, for the proposal review's proofs (review/prove.rs).
//!
//! Key decision: a CEL value is one tagged record of terms (`Sv`): a tag saying which kind of
//! value it is (or that evaluation failed), and one payload term per kind. Every operation is
//! an `ite` over the operands' tags that mirrors eval.rs case by case, so errors, CEL's
//! commutative `&&`/`||` and cross-kind number equality are modelled exactly. What cannot be
//! modelled exactly (regular expressions, double arithmetic, conversions, comprehensions, …)
//! becomes an uninterpreted function of its operands' terms, named by the operation: the same
//! expression over the same inputs is the same term in both policies, and any other value is
//! possible, so an unsatisfiable query is still a proof.

use super::Expr;
use super::node::{BinOp, Func, Lit, Node, Root};
use super::schema::{ActionField, FieldPath, Shape};
use z3::Sort;
use z3::ast::{Bool, Dynamic, Int, Real, String as Str};

/// The kinds of value, as the tag term's values.
pub(crate) mod tag {
    pub const ERR: i64 = 0;
    pub const NULL: i64 = 1;
    pub const BOOL: i64 = 2;
    pub const NUM: i64 = 3;
    pub const STR: i64 = 4;
    pub const TS: i64 = 5;
    pub const DUR: i64 = 6;
    pub const LIST: i64 = 7;
    pub const MAP: i64 = 8;
    pub const OTHER: i64 = 9;
}

/// The kinds of number.
pub(crate) mod kind {
    pub const INT: i64 = 0;
    pub const UINT: i64 = 1;
    pub const DBL: i64 = 2;
}

/// A symbolic CEL value: `tag` says which payload is meaningful.
#[derive(Debug, Clone)]
pub(crate) struct Sv {
    pub tag: Int,
    /// A bool's value.
    pub b: Bool,
    /// A number's value (ints and doubles alike, exactly).
    pub n: Real,
    /// A number's kind.
    pub k: Int,
    /// A string's value.
    pub s: Str,
    /// A timestamp's or duration's nanoseconds.
    pub t: Int,
    /// A list's, map's or other value's identity.
    pub h: Int,
}

fn int(i: i64) -> Int {
    Int::from_i64(i)
}

/// A whole number as a real (Z3 4.8.12 has no `Z3_mk_real_int64`, which
/// `Real::from_rational` calls).
pub(crate) fn real(i: i64) -> Real {
    Real::from_int(&int(i))
}

impl Sv {
    fn of(tag: i64) -> Sv {
        Sv {
            tag: int(tag),
            b: Bool::from_bool(false),
            n: real(0),
            k: int(kind::INT),
            s: Str::from(""),
            t: int(0),
            h: int(0),
        }
    }
    pub(crate) fn err() -> Sv {
        Sv::of(tag::ERR)
    }
    pub(crate) fn null() -> Sv {
        Sv::of(tag::NULL)
    }
    pub(crate) fn boolean(b: Bool) -> Sv {
        Sv {
            b,
            ..Sv::of(tag::BOOL)
        }
    }
    pub(crate) fn number(n: Real, k: Int) -> Sv {
        Sv {
            n,
            k,
            ..Sv::of(tag::NUM)
        }
    }
    pub(crate) fn integer(i: &Int) -> Sv {
        Sv::number(i.to_real(), int(kind::INT))
    }
    pub(crate) fn string(s: Str) -> Sv {
        Sv {
            s,
            ..Sv::of(tag::STR)
        }
    }
    pub(crate) fn timestamp(t: Int) -> Sv {
        Sv {
            t,
            ..Sv::of(tag::TS)
        }
    }
    pub(crate) fn handle(tag: i64, h: Int) -> Sv {
        Sv { h, ..Sv::of(tag) }
    }
    pub(crate) fn is(&self, t: i64) -> Bool {
        self.tag.eq(int(t))
    }
    pub(crate) fn is_err(&self) -> Bool {
        self.is(tag::ERR)
    }
    /// `then` where `c` holds, else `self`.
    pub(crate) fn unless(self, c: &Bool, then: &Sv) -> Sv {
        ite(c, then, &self)
    }
    /// The terms that determine the value, for uninterpreted functions of it.
    pub(crate) fn terms(&self) -> Vec<Dynamic> {
        vec![
            Dynamic::from_ast(&self.tag),
            Dynamic::from_ast(&self.b),
            Dynamic::from_ast(&self.n),
            Dynamic::from_ast(&self.k),
            Dynamic::from_ast(&self.s),
            Dynamic::from_ast(&self.t),
            Dynamic::from_ast(&self.h),
        ]
    }
    /// Whether the value is the bool `true` (false for errors and other kinds).
    pub(crate) fn truth(&self) -> Bool {
        Bool::and(&[self.is(tag::BOOL), self.b.clone()])
    }
    /// Whether the value is the bool `false`.
    fn falsity(&self) -> Bool {
        Bool::and(&[self.is(tag::BOOL), self.b.not()])
    }
}

pub(crate) fn ite(c: &Bool, a: &Sv, b: &Sv) -> Sv {
    Sv {
        tag: c.ite(&a.tag, &b.tag),
        b: c.ite(&a.b, &b.b),
        n: c.ite(&a.n, &b.n),
        k: c.ite(&a.k, &b.k),
        s: c.ite(&a.s, &b.s),
        t: c.ite(&a.t, &b.t),
        h: c.ite(&a.h, &b.h),
    }
}

/// What the encoder reads from the symbolic action and shares between the two policies.
pub(crate) trait Symbols {
    /// A typed field's value; an error when the action does not carry it.
    fn field(&mut self, f: ActionField) -> Sv;
    /// Whether the action carries a typed field.
    fn present(&mut self, f: ActionField) -> Bool;
    /// The value at `root.steps` in a JSON field; an error where eval.rs fails the walk.
    fn json(&mut self, root: ActionField, steps: &[String]) -> Sv;
    /// `has(root.steps.key)`: an error unless `root.steps` reads as a map.
    fn json_has(&mut self, root: ActionField, steps: &[String], key: &str) -> Sv;
    /// `agent.id`.
    fn agent_id(&mut self) -> Sv;
    /// `agent.tier` under this policy's `agents:` map.
    fn agent_tier(&mut self) -> Sv;
    /// `tenant`.
    fn tenant(&mut self) -> Sv;
    /// `now`.
    fn now(&mut self) -> Sv;
    /// The uninterpreted function called `name` applied to `args`: the same declaration
    /// for both policies.
    fn apply(&mut self, name: &str, args: &[Dynamic], range: &Sort) -> Dynamic;
    /// The identity of a literal list, map, bytes or type value, by its text.
    fn literal(&mut self, text: &str) -> Int;
    /// Terms that determine everything the tier-dependent parts read (`agent.tier`).
    fn tier_terms(&mut self) -> Vec<Dynamic>;
    /// Whether `item` is in the list `list` (a function of both), recorded so that a
    /// witness's lists can hold what the model says they hold.
    fn member(&mut self, list: &Sv, item: &Sv) -> Bool;
}

fn sorts() -> [Sort; 7] {
    [
        Sort::int(),
        Sort::bool(),
        Sort::real(),
        Sort::int(),
        Sort::string(),
        Sort::int(),
        Sort::int(),
    ]
}

/// A value nothing is known about but that it is `name` applied to `args`.
pub(crate) fn opaque(sy: &mut dyn Symbols, name: &str, args: &[Dynamic]) -> Sv {
    let [si, sb, sr, sk, ss, st, sh] = sorts();
    let mut apply = |part: &str, range: &Sort| sy.apply(&format!("{name}#{part}"), args, range);
    let (tag, b, n, k, s, t, h) = (
        apply("tag", &si),
        apply("b", &sb),
        apply("n", &sr),
        apply("k", &sk),
        apply("s", &ss),
        apply("t", &st),
        apply("h", &sh),
    );
    Sv {
        tag: tag.as_int().unwrap_or_else(|| int(tag::ERR)),
        b: b.as_bool().unwrap_or_else(|| Bool::from_bool(false)),
        n: n.as_real().unwrap_or_else(|| real(0)),
        k: k.as_int().unwrap_or_else(|| int(0)),
        s: s.as_string().unwrap_or_else(|| Str::from("")),
        t: t.as_int().unwrap_or_else(|| int(0)),
        h: h.as_int().unwrap_or_else(|| int(0)),
    }
}

fn opaque_of(sy: &mut dyn Symbols, name: &str, args: &[&Sv]) -> Sv {
    let terms: Vec<Dynamic> = args.iter().flat_map(|a| a.terms()).collect();
    opaque(sy, name, &terms)
}

/// A bool nothing is known about but that it is `name` applied to `args`.
pub(crate) fn opaque_bool(sy: &mut dyn Symbols, name: &str, args: &[Dynamic]) -> Bool {
    sy.apply(name, args, &Sort::bool())
        .as_bool()
        .unwrap_or_else(|| Bool::from_bool(false))
}

/// Either operand an error: the result is one.
fn either_err(x: &Sv, y: &Sv) -> Bool {
    Bool::or(&[x.is_err(), y.is_err()])
}

/// The largest integer a double holds exactly, and so compares exactly with.
const EXACT: i64 = 1 << 53;

/// Whether comparing two numbers as reals is what eval.rs's `cmp_num` does: same kind, two
/// integer kinds, or an integer a double holds exactly against a double.
fn exact_numbers(x: &Sv, y: &Sv) -> Bool {
    let small = |v: &Sv| Bool::and(&[v.n.le(real(EXACT)), v.n.ge(real(-EXACT))]);
    let dbl = |v: &Sv| v.k.eq(int(kind::DBL));
    Bool::or(&[
        x.k.eq(&y.k),
        Bool::and(&[dbl(x).not(), dbl(y).not()]),
        Bool::and(&[dbl(x), small(y)]),
        Bool::and(&[dbl(y), small(x)]),
    ])
}

/// CEL equality as eval.rs's `equal`; an error when either side is one.
pub(crate) fn equal(sy: &mut dyn Symbols, x: &Sv, y: &Sv) -> Sv {
    let both = |t: i64| Bool::and(&[x.is(t), y.is(t)]);
    let num_args = [
        Dynamic::from_ast(&x.n),
        Dynamic::from_ast(&x.k),
        Dynamic::from_ast(&y.n),
        Dynamic::from_ast(&y.k),
    ];
    let num_eq = exact_numbers(x, y).ite(&x.n.eq(&y.n), &opaque_bool(sy, "num_eq", &num_args));
    let container_eq = opaque_bool(
        sy,
        "container_eq",
        &[
            Dynamic::from_ast(&x.tag),
            Dynamic::from_ast(&x.h),
            Dynamic::from_ast(&y.tag),
            Dynamic::from_ast(&y.h),
        ],
    );
    let same = Bool::or(&[
        Bool::and(&[both(tag::NUM), num_eq]),
        both(tag::NULL),
        Bool::and(&[both(tag::BOOL), x.b.eq(&y.b)]),
        Bool::and(&[both(tag::STR), x.s.eq(&y.s)]),
        Bool::and(&[both(tag::TS), x.t.eq(&y.t)]),
        Bool::and(&[both(tag::DUR), x.t.eq(&y.t)]),
        Bool::and(&[
            Bool::or(&[both(tag::LIST), both(tag::MAP), both(tag::OTHER)]),
            Bool::or(&[x.h.eq(&y.h), container_eq]),
        ]),
    ]);
    Sv::boolean(same).unless(&either_err(x, y), &Sv::err())
}

/// `<`, `<=`, `>`, `>=` as eval.rs's `compare`: numbers by value, strings, bools,
/// timestamps and durations; anything else an error.
fn order(sy: &mut dyn Symbols, op: BinOp, x: &Sv, y: &Sv) -> Sv {
    let both = |t: i64| Bool::and(&[x.is(t), y.is(t)]);
    let real = |a: &Real, b: &Real| match op {
        BinOp::Lt => a.lt(b),
        BinOp::Le => a.le(b),
        BinOp::Gt => a.gt(b),
        _ => a.ge(b),
    };
    let ints = |a: &Int, b: &Int| match op {
        BinOp::Lt => a.lt(b),
        BinOp::Le => a.le(b),
        BinOp::Gt => a.gt(b),
        _ => a.ge(b),
    };
    let strs = match op {
        BinOp::Lt => x.s.str_lt(&y.s),
        BinOp::Le => x.s.str_le(&y.s),
        BinOp::Gt => y.s.str_lt(&x.s),
        _ => y.s.str_le(&x.s),
    };
    let bit = |b: &Bool| b.ite(&int(1), &int(0));
    let num_args = [
        Dynamic::from_ast(&x.n),
        Dynamic::from_ast(&x.k),
        Dynamic::from_ast(&y.n),
        Dynamic::from_ast(&y.k),
    ];
    let mixed = opaque_bool(sy, &format!("num_{op:?}"), &num_args);
    let num = exact_numbers(x, y).ite(&real(&x.n, &y.n), &mixed);
    let ok = Bool::or(&[
        both(tag::NUM),
        both(tag::STR),
        both(tag::BOOL),
        both(tag::TS),
        both(tag::DUR),
    ]);
    let value = both(tag::NUM).ite(
        &num,
        &both(tag::STR).ite(
            &strs,
            &both(tag::BOOL).ite(&ints(&bit(&x.b), &bit(&y.b)), &ints(&x.t, &y.t)),
        ),
    );
    Sv::boolean(value).unless(&ok.not(), &Sv::err())
}

const I64_MIN: i64 = i64::MIN;
const I64_MAX: i64 = i64::MAX;

/// Int arithmetic exactly, with eval.rs's overflow errors; everything else uninterpreted.
fn arith(sy: &mut dyn Symbols, op: BinOp, x: &Sv, y: &Sv) -> Sv {
    let fallback = opaque_of(sy, &format!("arith_{op:?}"), &[x, y]);
    let ints = Bool::and(&[
        x.is(tag::NUM),
        y.is(tag::NUM),
        x.k.eq(int(kind::INT)),
        y.k.eq(int(kind::INT)),
    ]);
    let exact = match op {
        BinOp::Add => Some(Real::add(&[&x.n, &y.n])),
        BinOp::Sub => Some(Real::sub(&[&x.n, &y.n])),
        BinOp::Mul => Some(Real::mul(&[&x.n, &y.n])),
        _ => None,
    };
    let mut out = fallback;
    if let Some(n) = exact {
        let in_range = Bool::and(&[
            n.ge(Real::from_int(&int(I64_MIN))),
            n.le(Real::from_int(&int(I64_MAX))),
        ]);
        let result = Sv::number(n, int(kind::INT)).unless(&in_range.not(), &Sv::err());
        out = out.unless(&ints, &result);
    }
    if op == BinOp::Add {
        let strs = Bool::and(&[x.is(tag::STR), y.is(tag::STR)]);
        out = out.unless(&strs, &Sv::string(Str::concat(&[&x.s, &y.s])));
    }
    out.unless(&either_err(x, y), &Sv::err())
}

/// Literal values of a list node, when it is one (`[1, 2]` folds to `Node::Json`).
fn literal_items(sy: &mut dyn Symbols, node: &Node) -> Option<Vec<Sv>> {
    match node {
        Node::Json(v) => v
            .as_array()
            .map(|items| items.iter().map(|i| json_literal(sy, i)).collect()),
        _ => None,
    }
}

fn json_literal(sy: &mut dyn Symbols, v: &serde_json::Value) -> Sv {
    use serde_json::Value;
    match v {
        Value::Null => Sv::null(),
        Value::Bool(b) => Sv::boolean(Bool::from_bool(*b)),
        Value::String(s) => Sv::string(Str::from(s.as_str())),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Sv::number(Real::from_int(&int(i)), int(kind::INT))
            } else if let Some(u) = n.as_u64() {
                Sv::number(Real::from_int(&Int::from_u64(u)), int(kind::UINT))
            } else {
                n.as_f64()
                    .and_then(exact_real)
                    .map_or_else(Sv::err, |r| Sv::number(r, int(kind::DBL)))
            }
        }
        Value::Array(_) => Sv::handle(tag::LIST, sy.literal(&v.to_string())),
        Value::Object(_) => Sv::handle(tag::MAP, sy.literal(&v.to_string())),
    }
}

/// A finite double as the exact rational it is.
pub(crate) fn exact_real(d: f64) -> Option<Real> {
    if !d.is_finite() {
        return None;
    }
    let bits = d.to_bits();
    let negative = bits >> 63 == 1;
    let exponent = ((bits >> 52) & 0x7ff) as i64;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exp) = if exponent == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), exponent - 1075)
    };
    let sign = if negative { "-" } else { "" };
    let (num, den) = if exp >= 0 {
        (shifted(mantissa, exp as u32), "1".to_owned())
    } else {
        (mantissa.to_string(), shifted(1, (-exp) as u32))
    };
    Real::from_rational_str(&format!("{sign}{num}"), &den)
}

/// `m * 2^shift` in decimal.
fn shifted(m: u64, shift: u32) -> String {
    // Little-endian base-10^9 digits.
    let mut digits: Vec<u64> = vec![
        m % 1_000_000_000,
        m / 1_000_000_000 % 1_000_000_000,
        m / 1_000_000_000_000_000_000,
    ];
    for _ in 0..shift {
        let mut carry = 0;
        for d in digits.iter_mut() {
            let v = *d * 2 + carry;
            *d = v % 1_000_000_000;
            carry = v / 1_000_000_000;
        }
        if carry > 0 {
            digits.push(carry);
        }
    }
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    let mut out = String::new();
    for (i, d) in digits.iter().rev().enumerate() {
        if i == 0 {
            out.push_str(&d.to_string());
        } else {
            out.push_str(&format!("{d:09}"));
        }
    }
    out
}

fn lit(sy: &mut dyn Symbols, l: &Lit) -> Sv {
    match l {
        Lit::Null => Sv::null(),
        Lit::Bool(b) => Sv::boolean(Bool::from_bool(*b)),
        Lit::Int(i) => Sv::number(Real::from_int(&int(*i)), int(kind::INT)),
        Lit::UInt(u) => Sv::number(Real::from_int(&Int::from_u64(*u)), int(kind::UINT)),
        Lit::Double(d) => match exact_real(*d) {
            Some(r) => Sv::number(r, int(kind::DBL)),
            None => {
                let h = sy.literal(&format!("double:{}", d.to_bits()));
                opaque(sy, "double_literal", &[Dynamic::from_ast(&h)])
            }
        },
        Lit::Str(s) => Sv::string(Str::from(s.as_ref())),
        Lit::Bytes(b) => Sv::handle(tag::OTHER, sy.literal(&format!("bytes:{b:?}"))),
        Lit::Type(t) => Sv::handle(tag::OTHER, sy.literal(&format!("type:{}", t.name()))),
        Lit::Timestamp(t) => Sv::timestamp(Int::from_i128(t.as_nanosecond())),
        Lit::Duration(d) => Sv {
            t: Int::from_i128(d.as_nanos()),
            ..Sv::of(tag::DUR)
        },
    }
}

/// The JSON field a root reads directly, if any.
fn json_root(root: Root) -> Option<ActionField> {
    match root {
        Root::Field(ActionField::Payload) => Some(ActionField::Payload),
        Root::Field(ActionField::Context) | Root::Context => Some(ActionField::Context),
        _ => None,
    }
}

impl Expr {
    /// The condition as a symbolic value.
    pub(crate) fn symbolic(&self, sy: &mut dyn Symbols) -> Sv {
        encode(&self.node, sy)
    }
}

fn encode(node: &Node, sy: &mut dyn Symbols) -> Sv {
    match node {
        Node::Lit(l) => lit(sy, l),
        Node::Json(v) => json_literal(sy, v),
        Node::Path(root, steps) => path(sy, *root, steps),
        Node::Present(root) => match root {
            Root::Field(f) => Sv::boolean(sy.present(*f)),
            Root::Context => Sv::boolean(sy.present(ActionField::Context)),
            other => {
                let v = path(sy, *other, &[]);
                Sv::boolean(v.is_err().not())
            }
        },
        Node::Has(operand, field) => match operand.as_ref() {
            Node::Path(root, steps) if json_root(*root).is_some() => {
                let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
                let root = json_root(*root).unwrap_or(ActionField::Context);
                sy.json_has(root, &steps, field)
            }
            other => {
                let x = encode(other, sy);
                opaque_of(sy, &format!("has.{field}"), &[&x])
            }
        },
        Node::Index(operand, index) => match (operand.as_ref(), index.as_ref()) {
            (Node::Path(root, steps), Node::Lit(Lit::Str(key))) if json_root(*root).is_some() => {
                let mut steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
                steps.push(key.to_string());
                let root = json_root(*root).unwrap_or(ActionField::Context);
                sy.json(root, &steps)
            }
            (a, b) => {
                let (x, y) = (encode(a, sy), encode(b, sy));
                opaque_of(sy, "index", &[&x, &y])
            }
        },
        Node::Select(operand, field) => {
            let x = encode(operand, sy);
            opaque_of(sy, &format!("select.{field}"), &[&x])
        }
        Node::Not(a) => {
            let x = encode(a, sy);
            Sv::boolean(x.b.not()).unless(&x.is(tag::BOOL).not(), &Sv::err())
        }
        Node::Neg(a) => {
            let x = encode(a, sy);
            let fallback = opaque_of(sy, "neg", &[&x]);
            let int_ok = Bool::and(&[
                x.is(tag::NUM),
                x.k.eq(int(kind::INT)),
                x.n.gt(Real::from_int(&int(I64_MIN))),
            ]);
            let dbl = Bool::and(&[x.is(tag::NUM), x.k.eq(int(kind::DBL))]);
            let negated = Sv::number(x.n.unary_minus(), x.k.clone());
            fallback
                .unless(&Bool::or(&[int_ok, dbl]), &negated)
                .unless(&x.is_err(), &Sv::err())
        }
        Node::And(a, b) | Node::Or(a, b) => {
            let or = matches!(node, Node::Or(..));
            let (x, y) = (encode(a, sy), encode(b, sy));
            let decides = |v: &Sv| if or { v.truth() } else { v.falsity() };
            let both_bool = Bool::and(&[x.is(tag::BOOL), y.is(tag::BOOL)]);
            let decided = Bool::or(&[decides(&x), decides(&y)]);
            let result = Sv::err().unless(&both_bool, &Sv::boolean(Bool::from_bool(!or)));
            result.unless(&decided, &Sv::boolean(Bool::from_bool(or)))
        }
        Node::Cond(c, t, f) => {
            let (c, t, f) = (encode(c, sy), encode(t, sy), encode(f, sy));
            ite(&c.b, &t, &f).unless(&c.is(tag::BOOL).not(), &Sv::err())
        }
        Node::Binary(op, a, b) => binary(sy, *op, a, b),
        Node::Call(f, args) => call(sy, *f, args),
        Node::Matches(a, re) => {
            let x = encode(a, sy);
            let name = format!("matches:{}", re.as_str());
            let m = opaque_bool(sy, &name, &[Dynamic::from_ast(&x.s)]);
            Sv::boolean(m).unless(&x.is(tag::STR).not(), &Sv::err())
        }
        Node::TimePart(part, a, tz) => {
            let x = encode(a, sy);
            let zone = tz.as_ref().map(|z| format!("{z:?}")).unwrap_or_default();
            opaque_of(sy, &format!("time.{part:?}.{zone}"), &[&x])
        }
        Node::NotStrictlyFalse(a) => {
            let x = encode(a, sy);
            Sv::boolean(x.falsity().not())
        }
        Node::List(items) => {
            let values: Vec<Sv> = items.iter().map(|i| encode(i, sy)).collect();
            let refs: Vec<&Sv> = values.iter().collect();
            let any_err = Bool::or(&values.iter().map(Sv::is_err).collect::<Vec<_>>());
            let h = opaque_of(sy, "list", &refs).h;
            Sv::handle(tag::LIST, h).unless(&any_err, &Sv::err())
        }
        Node::Map(entries) => {
            let values: Vec<Sv> = entries
                .iter()
                .flat_map(|(k, v)| [encode(k, sy), encode(v, sy)])
                .collect();
            let refs: Vec<&Sv> = values.iter().collect();
            opaque_of(sy, "map", &refs)
        }
        // Only inside comprehensions, which are modelled whole.
        Node::Local(_) | Node::Append(..) => Sv::err(),
        Node::Comprehension(_) => {
            let mut reads = Vec::new();
            node.reads(&mut reads);
            let mut terms = Vec::new();
            for p in &reads {
                terms.extend(read_terms(sy, p));
            }
            terms.extend(sy.tier_terms());
            terms.extend(sy.now().terms());
            terms.extend(sy.tenant().terms());
            // The tree's text names the function: the same comprehension is the same term.
            opaque(sy, &format!("comprehension:{node:?}"), &terms)
        }
    }
}

/// Terms that determine the value at a path a comprehension reads.
fn read_terms(sy: &mut dyn Symbols, p: &FieldPath) -> Vec<Dynamic> {
    match p.field.shape() {
        Shape::Json => sy.json(p.field, &p.steps).terms(),
        Shape::Record => ActionField::children(Some(p.field))
            .flat_map(|c| {
                let mut t = sy.field(c).terms();
                t.push(Dynamic::from_ast(&sy.present(c)));
                t
            })
            .collect(),
        _ if p.field == ActionField::Agent => sy.agent_id().terms(),
        _ => sy.field(p.field).terms(),
    }
}

fn path(sy: &mut dyn Symbols, root: Root, steps: &[Box<str>]) -> Sv {
    if let Some(field) = json_root(root) {
        let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        return sy.json(field, &steps);
    }
    let base = match root {
        Root::Action => Sv::err(),
        Root::Field(f) if f.shape() == Shape::Record => {
            let children: Vec<Sv> = ActionField::children(Some(f))
                .map(|c| {
                    let v = sy.field(c);
                    let present = sy.present(c);
                    v.unless(&present.not(), &Sv::null())
                })
                .collect();
            let refs: Vec<&Sv> = children.iter().collect();
            let h = opaque_of(sy, &format!("record.{}", f.path()), &refs).h;
            let present = sy.present(f);
            Sv::handle(tag::MAP, h).unless(&present.not(), &Sv::err())
        }
        Root::Field(f) => sy.field(f),
        Root::Context => sy.json(ActionField::Context, &[]),
        Root::Agent => {
            let (id, tier) = (sy.agent_id(), sy.agent_tier());
            let h = opaque_of(sy, "agent", &[&id, &tier]).h;
            Sv::handle(tag::MAP, h)
        }
        Root::AgentId => sy.agent_id(),
        Root::AgentTier => sy.agent_tier(),
        Root::Tenant => sy.tenant(),
        Root::Now => sy.now(),
    };
    if steps.is_empty() {
        return base;
    }
    let name = steps.join(".");
    opaque_of(sy, &format!("steps.{}.{name}", root.name()), &[&base])
}

fn binary(sy: &mut dyn Symbols, op: BinOp, a: &Node, b: &Node) -> Sv {
    let x = encode(a, sy);
    match op {
        BinOp::In => {
            if let Some(items) = literal_items(sy, b) {
                let hits: Vec<Bool> = items.iter().map(|i| equal(sy, &x, i).truth()).collect();
                return Sv::boolean(Bool::or(&hits)).unless(&x.is_err(), &Sv::err());
            }
            if let Node::List(nodes) = b {
                let items: Vec<Sv> = nodes.iter().map(|n| encode(n, sy)).collect();
                let hits: Vec<Bool> = items.iter().map(|i| equal(sy, &x, i).truth()).collect();
                let errs: Vec<Bool> = items.iter().map(Sv::is_err).chain([x.is_err()]).collect();
                return Sv::boolean(Bool::or(&hits)).unless(&Bool::or(&errs), &Sv::err());
            }
            let y = encode(b, sy);
            // A literal key in a JSON map: whether the child exists.
            let key_in_map = match (a, b) {
                (Node::Lit(Lit::Str(key)), Node::Path(root, steps))
                    if json_root(*root).is_some() =>
                {
                    let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
                    let root = json_root(*root).unwrap_or(ActionField::Context);
                    Some(sy.json_has(root, &steps, key))
                }
                _ => None,
            };
            let member = sy.member(&y, &x);
            let mut result = Sv::boolean(member);
            if let Some(has) = key_in_map {
                result = result.unless(&y.is(tag::MAP), &has);
            }
            let container = Bool::or(&[y.is(tag::LIST), y.is(tag::MAP)]);
            result
                .unless(&container.not(), &Sv::err())
                .unless(&either_err(&x, &y), &Sv::err())
        }
        BinOp::Eq | BinOp::Ne => {
            let y = encode(b, sy);
            let eq = equal(sy, &x, &y);
            if op == BinOp::Eq {
                eq
            } else {
                Sv::boolean(eq.b.not()).unless(&eq.is_err(), &Sv::err())
            }
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let y = encode(b, sy);
            order(sy, op, &x, &y)
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
            let y = encode(b, sy);
            arith(sy, op, &x, &y)
        }
    }
}

fn call(sy: &mut dyn Symbols, f: Func, args: &[Node]) -> Sv {
    let values: Vec<Sv> = args.iter().map(|a| encode(a, sy)).collect();
    let any_err = Bool::or(&values.iter().map(Sv::is_err).collect::<Vec<_>>());
    match (f, values.as_slice()) {
        // library.rs: both must be strings, anything else is an error.
        (Func::StartsWith | Func::EndsWith | Func::Contains, [x, y]) => {
            let strs = Bool::and(&[x.is(tag::STR), y.is(tag::STR)]);
            let value = match f {
                Func::StartsWith => y.s.prefix(&x.s),
                Func::EndsWith => y.s.suffix(&x.s),
                _ => x.s.contains(&y.s),
            };
            Sv::err().unless(&strs, &Sv::boolean(value))
        }
        (Func::Size, [x]) => {
            let sized = opaque_of(sy, "call.Size", &[x]);
            sized
                .unless(&x.is(tag::STR), &Sv::integer(&x.s.length()))
                .unless(&x.is_err(), &Sv::err())
        }
        _ => {
            let refs: Vec<&Sv> = values.iter().collect();
            opaque_of(sy, &format!("call.{f:?}"), &refs).unless(&any_err, &Sv::err())
        }
    }
}
