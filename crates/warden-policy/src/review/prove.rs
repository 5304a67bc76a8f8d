//! Step 3: whether the candidate can decide any action more permissively than the live policy,
//! proven with Z3.
//!
//! Key decisions:
//! - One symbolic action (its type, agent, scope fields, typed fields and every JSON path
//!   either policy reads) is shared by both policies, and each policy's whole decision is
//!   encoded over it: globs, the `agents:` tiers, scopes, conditions (expr/symbolic.rs),
//!   evaluation errors (any applicable rule whose condition errs denies), combining, the
//!   default, and the obligations, approval and permit an allow or require_approval carries.
//! - "More permissive" is deny < require_approval < allow, or the same effect with a dropped
//!   `mode`, a raised or dropped limit, a lower quorum, another approver group, or a longer or
//!   more-used permit. Budgets and rate limits are state, so they are compared as written.
//! - Only what changed is encoded: when the default and the agents map are the same, the
//!   action types are limited to those a changed rule names, and only rules whose patterns can
//!   match such a type are encoded, so a one-rule change against a thousand rules is small.
//! - Unsatisfiable is a proof. Satisfiable or unknown (a timeout) is broadening; a model becomes
//!   an action that is then evaluated under both policies, and only one that reproduces is
//!   reported.

use super::Classification;
use crate::action::{Action, Env, Timestamp};
use crate::decision::{Decision, Verdict};
use crate::expr::schema::ActionField;
use crate::expr::symbolic::{self, Sv, Symbols, kind, tag};
use crate::glob::{Glob, GlobKind};
use crate::policy::{Effect, Policy, Rule, Tier};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use z3::ast::{Ast, Bool, Dynamic, Int, Real, Regexp, String as Str};
use z3::{FuncDecl, Params, SatResult, Solver, Sort};

/// What the comparison of two policies found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Narrowing, neutral or broadening (forbidden is decided before the proof).
    pub classification: Classification,
    /// Why, in sentences.
    pub reasons: Vec<String>,
    /// For broadening: actions that reproduce it.
    pub counterexamples: Vec<Counterexample>,
}

impl Comparison {
    pub(super) fn forbidden(reasons: Vec<String>) -> Self {
        Self {
            classification: Classification::Forbidden,
            reasons,
            counterexamples: Vec::new(),
        }
    }
}

/// An action the candidate treats more permissively than the live policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counterexample {
    /// The action, as a caller would submit it.
    pub action: Value,
    /// What the live policy decides.
    pub live: Side,
    /// What the candidate decides.
    pub candidate: Side,
}

/// One policy's decision on a counterexample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// The effect.
    pub effect: Verdict,
    /// The rules that matched, strongest first.
    pub rules: Vec<String>,
}

/// The most counterexamples reported.
const COUNTEREXAMPLES: usize = 3;
/// Models tried in search of reproducing counterexamples.
const ATTEMPTS: usize = 6;

/// Compares `live` and `candidate` for `tenant`; the solver may spend `timeout` on each
/// question.
pub fn compare(live: &Policy, candidate: &Policy, tenant: &str, timeout: Duration) -> Comparison {
    let stateful = state_broadening(live, candidate);
    let slice = Slice::new(live, candidate);
    if slice.is_empty() && stateful.is_empty() {
        return Comparison {
            classification: Classification::Neutral,
            reasons: vec!["no rule, default or tier that decides an action changes".into()],
            counterexamples: Vec::new(),
        };
    }
    // When every changed rule names its types exactly, each type is a question of its own
    // with the type a literal: the string solver then never has to reason about the type.
    let exact: Option<Vec<&str>> = slice.types.as_ref().and_then(|t| {
        let mut names: Vec<&str> = t
            .iter()
            .filter(|g| g.is_exact())
            .map(|g| g.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        t.iter().all(Glob::is_exact).then_some(names)
    });
    let types: Vec<Option<&str>> = match exact {
        Some(names) => names.into_iter().map(Some).collect(),
        None => vec![None],
    };
    let mut reasons = Vec::new();
    let mut counterexamples = Vec::new();
    let mut broadening = false;
    let mut same = true;
    for ty in types {
        let q = question(live, candidate, &slice, tenant, timeout, ty);
        match q.found {
            SatResult::Unsat => same &= q.same,
            SatResult::Sat => {
                broadening = true;
                counterexamples.extend(q.counterexamples);
                counterexamples.truncate(COUNTEREXAMPLES);
            }
            SatResult::Unknown => {
                broadening = true;
                reasons.push(format!(
                    "the solver could not decide within {} ms ({}); treated as broadening",
                    timeout.as_millis(),
                    q.unknown.unwrap_or_else(|| "unknown".into())
                ));
            }
        }
    }
    if broadening {
        reasons.insert(
            0,
            "some action can get a more permissive decision under the candidate".to_owned(),
        );
        if counterexamples.is_empty() {
            reasons.push(
                "no concrete action was confirmed (the witness involves parts of a condition Warden models as opaque: regular expressions, conversions, double arithmetic, comprehensions); treated as broadening".to_owned(),
            );
        }
    }
    reasons.extend(stateful.iter().cloned());
    let classification = if broadening || !stateful.is_empty() {
        Classification::Broadening
    } else if same {
        reasons.push("proven: every action gets the same decision".into());
        Classification::Neutral
    } else {
        reasons.push(
            "proven: no action gets a more permissive decision, and some get a stricter one".into(),
        );
        Classification::Narrowing
    };
    Comparison {
        classification,
        reasons,
        counterexamples,
    }
}

/// One question's answer.
struct Outcome {
    /// Whether some action is treated more permissively.
    found: SatResult,
    unknown: Option<String>,
    counterexamples: Vec<Counterexample>,
    /// When none is: whether every action is treated the same.
    same: bool,
}

fn question(
    live: &Policy,
    candidate: &Policy,
    slice: &Slice<'_>,
    tenant: &str,
    timeout: Duration,
    ty: Option<&str>,
) -> Outcome {
    let mut world = World::new(tenant, ty);
    let type_ok = slice.type_constraint(&world);
    let l = encode(live, &slice.live, &mut world);
    let c = encode(candidate, &slice.candidate, &mut world);
    let mut base = world.constraints.clone();
    base.push(type_ok);
    let more = more_permissive(&l, &c);

    // z3str3 answers these string-heavy questions in milliseconds where the default sequence
    // solver can take seconds; its "satisfiable" is checked by evaluating the witness, and its
    // "unsatisfiable" is confirmed by the default solver before it counts as a proof.
    let fast = solver(Some("z3str3"), timeout, &base);
    fast.push();
    fast.assert(&more);
    let mut found = fast.check();
    let mut sound = None;
    if found != SatResult::Sat {
        let s = solver(None, timeout, &base);
        s.assert(&more);
        found = s.check();
        sound = Some(s);
    }
    let mut out = Outcome {
        found,
        unknown: None,
        counterexamples: Vec::new(),
        same: false,
    };
    let witnesses = sound.as_ref().unwrap_or(&fast);
    match found {
        SatResult::Sat => {
            out.counterexamples = examples(witnesses, &world, live, candidate, tenant);
        }
        SatResult::Unknown => out.unknown = witnesses.get_reason_unknown(),
        // Narrowing or neutral both stand proven; an unknown here is called narrowing.
        SatResult::Unsat => {
            fast.pop(1);
            fast.assert(differs(&l, &c));
            out.same = fast.check() == SatResult::Unsat;
        }
    }
    out
}

/// A solver over `base`, with its string solver and time limit.
fn solver(strings: Option<&str>, timeout: Duration, base: &[Bool]) -> Solver {
    let solver = Solver::new();
    let mut params = Params::new();
    if let Some(s) = strings {
        params.set_symbol("string_solver", s);
    }
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    params.set_u32("timeout", ms.max(1));
    solver.set_params(&params);
    for constraint in base {
        solver.assert(constraint);
    }
    solver
}

/// Budgets and rate limits the candidate loosens, as sentences.
fn state_broadening(live: &Policy, cand: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for b in live.budgets() {
        let Some(n) = cand.budgets().iter().find(|x| x.id == b.id) else {
            out.push(format!("budget `{}` is removed", b.id));
            continue;
        };
        let raised = |a: Option<f64>, c: Option<f64>| match (a, c) {
            (Some(a), Some(c)) => c > a,
            (Some(_), None) => true,
            _ => false,
        };
        let (bl, nl) = (&b.limits, &n.limits);
        let pairs = [
            (
                "tool_calls",
                bl.tool_calls.map(|v| v as f64),
                nl.tool_calls.map(|v| v as f64),
            ),
            (
                "tokens",
                bl.tokens.map(|v| v as f64),
                nl.tokens.map(|v| v as f64),
            ),
            (
                "turns",
                bl.turns.map(|v| v as f64),
                nl.turns.map(|v| v as f64),
            ),
            ("cost_usd", bl.cost_usd, nl.cost_usd),
            (
                "duration",
                bl.duration.map(|d| d.as_secs_f64()),
                nl.duration.map(|d| d.as_secs_f64()),
            ),
        ];
        for (name, a, c) in pairs {
            if raised(a, c) {
                out.push(format!(
                    "budget `{}` raises or drops its {name} limit",
                    b.id
                ));
            }
        }
        if n.per != b.per {
            out.push(format!("budget `{}` counts per something else", b.id));
        }
        match (&b.count, &n.count) {
            (Some(x), Some(y)) if y.limit > x.limit || y.actions != x.actions => out.push(format!(
                "budget `{}` raises its count limit or counts other actions",
                b.id
            )),
            (Some(_), None) => out.push(format!("budget `{}` drops its count limit", b.id)),
            _ => {}
        }
    }
    for r in live.rate_limits() {
        match cand.rate_limits().iter().find(|x| x.id == r.id) {
            None => out.push(format!("rate limit `{}` is removed", r.id)),
            Some(n) if n.limit > r.limit || n.window < r.window => out.push(format!(
                "rate limit `{}` lets more through per window",
                r.id
            )),
            Some(n) if n.actions != r.actions || n.per != r.per => out.push(format!(
                "rate limit `{}` counts other actions or per something else",
                r.id
            )),
            Some(_) => {}
        }
    }
    out
}

/// What must be encoded: the rules of each policy that can matter, and the action types.
struct Slice<'a> {
    live: Vec<&'a Rule>,
    candidate: Vec<&'a Rule>,
    /// `None`: every type (the default or the tiers changed).
    types: Option<Vec<Glob>>,
}

/// What decides how a rule acts, as text: equal texts, equal rules.
fn fingerprint(r: &Rule) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(128);
    out.push_str(r.id().as_str());
    for g in r
        .actions()
        .iter()
        .chain([&Glob::new("|")])
        .chain(r.agents())
    {
        out.push('\u{1}');
        out.push_str(g.as_str());
    }
    let _ = write!(
        out,
        "\u{2}{:?}\u{2}{:?}\u{2}{}\u{2}{:?}",
        r.tiers(),
        r.scope(),
        r.when().unwrap_or("\u{3}"),
        r.effect()
    );
    if r.approval().is_some() || r.permit().is_some() || !r.set().is_empty() || r.preset().is_some()
    {
        let _ = write!(
            out,
            "\u{2}{:?}\u{2}{:?}\u{2}{:?}\u{2}{:?}",
            r.approval(),
            r.permit(),
            r.set(),
            r.preset()
        );
    }
    out
}

impl<'a> Slice<'a> {
    fn new(live: &'a Policy, cand: &'a Policy) -> Self {
        let agents = |p: &Policy| -> Vec<(String, Tier)> {
            p.agent_entries()
                .into_iter()
                .map(|(g, t)| (g.as_str().to_owned(), t))
                .collect()
        };
        let global =
            live.default_verdict() != cand.default_verdict() || agents(live) != agents(cand);
        let prints = |p: &'a Policy| -> BTreeMap<String, &'a Rule> {
            p.rules().iter().map(|r| (fingerprint(r), r)).collect()
        };
        let (lp, cp) = (prints(live), prints(cand));
        let mut changed: Vec<&Rule> = lp
            .iter()
            .filter(|(f, _)| !cp.contains_key(*f))
            .chain(cp.iter().filter(|(f, _)| !lp.contains_key(*f)))
            .map(|(_, r)| *r)
            .collect();
        // The first matching modify rule sets the mode, so their order matters.
        let modifies = |p: &'a Policy| -> Vec<String> {
            p.rules()
                .iter()
                .filter(|r| r.effect() == Effect::Modify)
                .map(fingerprint)
                .collect()
        };
        if modifies(live) != modifies(cand) {
            changed.extend(
                live.rules()
                    .iter()
                    .chain(cand.rules())
                    .filter(|r| r.effect() == Effect::Modify),
            );
        }
        if global {
            return Slice {
                live: live.rules().iter().collect(),
                candidate: cand.rules().iter().collect(),
                types: None,
            };
        }
        let types: Vec<Glob> = changed
            .iter()
            .flat_map(|r| r.actions().iter().cloned())
            .collect();
        let relevant = |p: &'a Policy| -> Vec<&'a Rule> {
            p.rules()
                .iter()
                .filter(|r| {
                    r.actions()
                        .iter()
                        .any(|g| types.iter().any(|t| may_overlap(g, t)))
                })
                .collect()
        };
        Slice {
            live: relevant(live),
            candidate: relevant(cand),
            types: Some(types),
        }
    }

    fn is_empty(&self) -> bool {
        self.types.as_ref().is_some_and(|t| t.is_empty())
    }

    fn type_constraint(&self, world: &World) -> Bool {
        match &self.types {
            None => Bool::from_bool(true),
            Some(globs) => Bool::or(
                &globs
                    .iter()
                    .map(|g| world.type_matches(g))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

/// Whether some name could match both patterns; `true` when unsure.
fn may_overlap(a: &Glob, b: &Glob) -> bool {
    match (a.kind(), b.kind()) {
        (GlobKind::Exact, _) => b.matches(a.as_str()),
        (_, GlobKind::Exact) => a.matches(b.as_str()),
        (GlobKind::Prefix(x), GlobKind::Prefix(y)) => {
            x.starts_with(y.as_str()) || y.starts_with(x.as_str())
        }
        _ => true,
    }
}

/// `s` matches the glob.
fn glob(g: &Glob, s: &Str) -> Bool {
    match g.kind() {
        GlobKind::Exact => s.eq(Str::from(g.as_str())),
        GlobKind::Prefix(p) => Str::from(p.as_str()).prefix(s),
        GlobKind::General(parts) => {
            let mut pieces: Vec<Regexp> = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    pieces.push(Regexp::full());
                }
                if !part.is_empty() {
                    pieces.push(Regexp::literal(part));
                }
            }
            let refs: Vec<&Regexp> = pieces.iter().collect();
            s.regex_matches(&Regexp::concat(&refs))
        }
    }
}

/// One JSON value in the symbolic action.
struct Cell {
    /// The key exists in its parent (always true for a root).
    present: Bool,
    value: Sv,
    /// A whole number's value, and a double's.
    whole: Int,
    fraction: Real,
}

/// The symbolic action both policies read.
struct World {
    tenant: String,
    ty: Str,
    /// The type, when the question fixes it.
    ty_name: Option<String>,
    texts: BTreeMap<ActionField, (Bool, Str)>,
    target: Bool,
    usage: Bool,
    confidence: (Bool, Real),
    cost: (Bool, Real),
    tokens: (Bool, Int),
    tool_calls: (Bool, Int),
    now_ms: Int,
    cells: BTreeMap<(ActionField, Vec<String>), Cell>,
    functions: HashMap<String, FuncDecl>,
    literals: HashMap<String, i64>,
    /// Every `item in list` asked: the list's identity, the item, the answer.
    members: Vec<(Int, Sv, Bool)>,
    constraints: Vec<Bool>,
}

const TEXTS: [ActionField; 9] = [
    ActionField::Id,
    ActionField::TargetType,
    ActionField::TargetId,
    ActionField::Mode,
    ActionField::Agent,
    ActionField::OnBehalfOf,
    ActionField::App,
    ActionField::Workflow,
    ActionField::RunId,
];

fn int(i: i64) -> Int {
    Int::from_i64(i)
}

impl World {
    fn new(tenant: &str, ty_name: Option<&str>) -> Self {
        let ty = ty_name.map_or_else(|| Str::new_const("action.type"), Str::from);
        let mut constraints = vec![ty.length().ge(int(1)), ty.length().le(int(200))];
        let mut texts = BTreeMap::new();
        for f in TEXTS {
            let has = Bool::new_const(format!("has:{}", f.path()));
            let v = Str::new_const(f.path());
            // The lengths an action accepts (action.rs), so a witness is one.
            let max = match f {
                ActionField::Id | ActionField::TargetId => crate::action::MAX_REFERENCE,
                ActionField::Mode => crate::action::MAX_MODE,
                _ => crate::action::MAX_IDENTIFIER,
            };
            let len = v.length();
            constraints.push(has.implies(Bool::and(&[
                len.ge(int(1)),
                len.le(int(i64::try_from(max).unwrap_or(i64::MAX))),
            ])));
            texts.insert(f, (has, v));
        }
        let target = Bool::new_const("has:action.target");
        let usage = Bool::new_const("has:action.usage");
        for f in [ActionField::TargetType, ActionField::TargetId] {
            constraints.push(texts[&f].0.implies(&target));
        }
        let confidence = (
            Bool::new_const("has:action.confidence"),
            Real::new_const("action.confidence"),
        );
        constraints.push(Bool::and(&[
            confidence.1.ge(symbolic::real(0)),
            confidence.1.le(symbolic::real(1)),
        ]));
        let cost = (
            Bool::new_const("has:action.usage.cost_usd"),
            Real::new_const("action.usage.cost_usd"),
        );
        constraints.push(cost.1.ge(symbolic::real(0)));
        let count = |name: &str, constraints: &mut Vec<Bool>| {
            let v = Int::new_const(name);
            constraints.push(Bool::and(&[v.ge(int(0)), v.le(int(i64::MAX))]));
            (Bool::new_const(format!("has:{name}")), v)
        };
        let tokens = count("action.usage.tokens", &mut constraints);
        let tool_calls = count("action.usage.tool_calls", &mut constraints);
        for has in [&cost.0, &tokens.0, &tool_calls.0] {
            constraints.push(has.implies(&usage));
        }
        let now_ms = Int::new_const("now");
        constraints.push(Bool::and(&[
            now_ms.ge(int(-62_135_596_800_000)),
            now_ms.le(int(253_402_300_799_999)),
        ]));
        World {
            tenant: tenant.to_owned(),
            ty,
            ty_name: ty_name.map(str::to_owned),
            texts,
            target,
            usage,
            confidence,
            cost,
            tokens,
            tool_calls,
            now_ms,
            cells: BTreeMap::new(),
            functions: HashMap::new(),
            literals: HashMap::new(),
            members: Vec::new(),
            constraints,
        }
    }

    /// Whether the action's type matches `g`: decided here when the type is fixed.
    fn type_matches(&self, g: &Glob) -> Bool {
        match &self.ty_name {
            Some(name) => Bool::from_bool(g.matches(name)),
            None => glob(g, &self.ty),
        }
    }

    fn agent(&self) -> (Bool, Str) {
        self.texts
            .get(&ActionField::Agent)
            .cloned()
            .unwrap_or_else(|| (Bool::from_bool(false), Str::from("")))
    }

    /// The cell at `root.steps`, made (with its ancestors) on first use.
    fn cell(&mut self, root: ActionField, steps: &[String]) -> &Cell {
        for depth in 0..=steps.len() {
            let key = (root, steps[..depth].to_vec());
            if self.cells.contains_key(&key) {
                continue;
            }
            let name = std::iter::once(root.path().to_owned())
                .chain(steps[..depth].iter().map(|s| format!("{s:?}")))
                .collect::<Vec<_>>()
                .join(".");
            // Whole numbers are an integer term, so the solver never needs `is_int`.
            let k = Int::new_const(format!("{name}#k"));
            let whole = Int::new_const(format!("{name}#i"));
            let fraction = Real::new_const(format!("{name}#n"));
            let is_whole = Bool::or(&[k.eq(int(kind::INT)), k.eq(int(kind::UINT))]);
            let value = Sv {
                tag: Int::new_const(format!("{name}#tag")),
                b: Bool::new_const(format!("{name}#b")),
                n: is_whole.ite(&whole.to_real(), &fraction.clone()),
                k: k.clone(),
                s: Str::new_const(format!("{name}#s")),
                t: int(0),
                h: Int::new_const(format!("{name}#h")),
            };
            // The action's payload and context are objects or absent (null).
            let tags: &[i64] = if depth == 0 {
                &[tag::NULL, tag::MAP]
            } else {
                &[
                    tag::NULL,
                    tag::BOOL,
                    tag::NUM,
                    tag::STR,
                    tag::LIST,
                    tag::MAP,
                ]
            };
            self.constraints.push(Bool::or(
                &tags.iter().map(|t| value.is(*t)).collect::<Vec<_>>(),
            ));
            let two63 = Int::from_u64(1 << 63);
            let two64 = Int::add(&[&Int::from_u64(u64::MAX), &int(1)]);
            self.constraints.push(Bool::or(&[
                Bool::and(&[
                    k.eq(int(kind::INT)),
                    whole.lt(&two63),
                    whole.ge(two63.unary_minus()),
                ]),
                Bool::and(&[k.eq(int(kind::UINT)), whole.ge(&two63), whole.lt(&two64)]),
                k.eq(int(kind::DBL)),
            ]));
            let present = if depth == 0 {
                Bool::from_bool(true)
            } else {
                Bool::new_const(format!("{name}#present"))
            };
            self.cells.insert(
                key,
                Cell {
                    present,
                    value,
                    whole,
                    fraction,
                },
            );
        }
        &self.cells[&(root, steps.to_vec())]
    }

    /// Reading `root.steps` as eval.rs walks it.
    fn read(&mut self, root: ActionField, steps: &[String]) -> Sv {
        let rootv = self.cell(root, &[]).value.clone();
        if steps.is_empty() {
            return rootv.clone().unless(&rootv.is(tag::NULL), &Sv::err());
        }
        let mut ok = Vec::new();
        for depth in 0..steps.len() {
            let parent = self.cell(root, &steps[..depth]).value.is(tag::MAP);
            let child = self.cell(root, &steps[..=depth]).present.clone();
            ok.push(parent);
            ok.push(child);
        }
        let value = self.cell(root, steps).value.clone();
        value.unless(&Bool::and(&ok).not(), &Sv::err())
    }
}

/// Tier codes: `Tier` order, -1 for none.
fn tier_code(t: Tier) -> i64 {
    Tier::ALL
        .iter()
        .position(|x| *x == t)
        .map_or(-1, |i| i as i64)
}

/// One policy's view of the world: the same action, its own tiers.
struct View<'w> {
    world: &'w mut World,
    tier: Int,
}

impl Symbols for View<'_> {
    fn field(&mut self, f: ActionField) -> Sv {
        let w = &mut *self.world;
        match f {
            ActionField::Type => Sv::string(w.ty.clone()),
            ActionField::Confidence => Sv::number(w.confidence.1.clone(), int(kind::DBL))
                .unless(&w.confidence.0.not(), &Sv::err()),
            ActionField::UsageCostUsd => {
                Sv::number(w.cost.1.clone(), int(kind::DBL)).unless(&w.cost.0.not(), &Sv::err())
            }
            ActionField::UsageTokens => {
                Sv::integer(&w.tokens.1).unless(&w.tokens.0.not(), &Sv::err())
            }
            ActionField::UsageToolCalls => {
                Sv::integer(&w.tool_calls.1).unless(&w.tool_calls.0.not(), &Sv::err())
            }
            ActionField::Payload | ActionField::Context => w.read(f, &[]),
            ActionField::Target | ActionField::Usage => {
                // Records are read through their children (expr/symbolic.rs).
                Sv::err()
            }
            text => match w.texts.get(&text) {
                Some((has, v)) => Sv::string(v.clone()).unless(&has.not(), &Sv::err()),
                None => Sv::err(),
            },
        }
    }

    fn present(&mut self, f: ActionField) -> Bool {
        let w = &mut *self.world;
        match f {
            ActionField::Type => Bool::from_bool(true),
            ActionField::Target => w.target.clone(),
            ActionField::Usage => w.usage.clone(),
            ActionField::Confidence => w.confidence.0.clone(),
            ActionField::UsageCostUsd => w.cost.0.clone(),
            ActionField::UsageTokens => w.tokens.0.clone(),
            ActionField::UsageToolCalls => w.tool_calls.0.clone(),
            ActionField::Payload | ActionField::Context => w.cell(f, &[]).value.is(tag::NULL).not(),
            text => w
                .texts
                .get(&text)
                .map_or_else(|| Bool::from_bool(false), |(has, _)| has.clone()),
        }
    }

    fn json(&mut self, root: ActionField, steps: &[String]) -> Sv {
        self.world.read(root, steps)
    }

    fn json_has(&mut self, root: ActionField, steps: &[String], key: &str) -> Sv {
        let parent = self.world.read(root, steps);
        let mut child = steps.to_vec();
        child.push(key.to_owned());
        let present = self.world.cell(root, &child).present.clone();
        Sv::boolean(present).unless(&parent.is(tag::MAP).not(), &Sv::err())
    }

    fn agent_id(&mut self) -> Sv {
        let (has, v) = self.world.agent();
        Sv::string(v).unless(&has.not(), &Sv::err())
    }

    fn agent_tier(&mut self) -> Sv {
        let mut out = Sv::err();
        for t in Tier::ALL {
            out = out.unless(
                &self.tier.eq(int(tier_code(t))),
                &Sv::string(Str::from(t.as_str())),
            );
        }
        out
    }

    fn tenant(&mut self) -> Sv {
        Sv::string(Str::from(self.world.tenant.as_str()))
    }

    fn now(&mut self) -> Sv {
        Sv::timestamp(Int::mul(&[&self.world.now_ms, &int(1_000_000)]))
    }

    fn apply(&mut self, name: &str, args: &[Dynamic], range: &Sort) -> Dynamic {
        // Sort kinds are plain enums; formatting a `Sort` would ask Z3 for its text.
        let kinds: Vec<_> = args.iter().map(|a| a.sort_kind()).collect();
        let key = format!("{name}/{kinds:?}/{:?}", range.kind());
        let f = self.world.functions.entry(key).or_insert_with(|| {
            let domain: Vec<Sort> = args.iter().map(|a| a.get_sort()).collect();
            let refs: Vec<&Sort> = domain.iter().collect();
            FuncDecl::new(name, &refs, range)
        });
        let refs: Vec<&dyn Ast> = args.iter().map(|a| a as &dyn Ast).collect();
        f.apply(&refs)
    }

    fn literal(&mut self, text: &str) -> Int {
        let next = self.world.literals.len() as i64 + 1_000_000;
        int(*self.world.literals.entry(text.to_owned()).or_insert(next))
    }

    fn tier_terms(&mut self) -> Vec<Dynamic> {
        vec![Dynamic::from_ast(&self.tier)]
    }

    fn member(&mut self, list: &Sv, item: &Sv) -> Bool {
        let args = [
            Dynamic::from_ast(&list.h),
            Dynamic::from_ast(&item.tag),
            Dynamic::from_ast(&item.n),
            Dynamic::from_ast(&item.s),
            Dynamic::from_ast(&item.b),
            Dynamic::from_ast(&item.t),
            Dynamic::from_ast(&item.h),
        ];
        let answer = symbolic::opaque_bool(self, "member", &args);
        self.world
            .members
            .push((list.h.clone(), item.clone(), answer.clone()));
        answer
    }
}

/// One policy's decision as terms.
struct Encoded {
    /// 0 deny, 1 require_approval, 2 allow.
    verdict: Int,
    /// The mode obligation: whether one is set, and which.
    mode: (Bool, Str),
    /// Limit obligations by name: whether set, and the lowest value.
    limits: BTreeMap<String, (Bool, Real)>,
    /// For require_approval: the quorum, whether any approver may approve, and the groups
    /// that may.
    quorum: Int,
    any_approver: Bool,
    groups: BTreeMap<String, Bool>,
    /// For allow: the permit's lifetime in seconds and its uses.
    permit_secs: Int,
    permit_uses: Int,
}

fn verdict_code(v: Verdict) -> i64 {
    match v {
        Verdict::Deny => 0,
        Verdict::RequireApproval => 1,
        Verdict::Allow => 2,
    }
}

fn encode(policy: &Policy, rules: &[&Rule], world: &mut World) -> Encoded {
    let (has_agent, agent) = world.agent();
    let mut tier = int(-1);
    // Patterns last-to-first so the most specific is outermost; exact ids over all.
    let entries = policy.agent_entries();
    for (g, t) in entries.iter().rev() {
        let hit = Bool::and(&[has_agent.clone(), glob(g, &agent)]);
        tier = hit.ite(&int(tier_code(*t)), &tier);
    }
    let mut view = View {
        world,
        tier: tier.clone(),
    };

    let mut any_error = Vec::new();
    let mut matched: Vec<(&Rule, Bool)> = Vec::new();
    for rule in rules {
        if let Some(name) = &view.world.ty_name
            && !rule.actions().iter().any(|g| g.matches(name))
        {
            continue;
        }
        let mut filters = vec![Bool::or(
            &rule
                .actions()
                .iter()
                .map(|g| view.world.type_matches(g))
                .collect::<Vec<_>>(),
        )];
        if !rule.agents().is_empty() {
            let any = Bool::or(
                &rule
                    .agents()
                    .iter()
                    .map(|g| glob(g, &agent))
                    .collect::<Vec<_>>(),
            );
            filters.push(Bool::and(&[has_agent.clone(), any]));
        }
        if !rule.tiers().is_empty() {
            filters.push(Bool::or(
                &rule
                    .tiers()
                    .iter()
                    .map(|t| tier.eq(int(tier_code(*t))))
                    .collect::<Vec<_>>(),
            ));
        }
        for (field, want) in [
            (ActionField::App, &rule.scope().app),
            (ActionField::Workflow, &rule.scope().workflow),
        ] {
            if let Some(want) = want {
                let (has, v) = view.world.texts[&field].clone();
                filters.push(Bool::and(&[has, v.eq(Str::from(want.as_str()))]));
            }
        }
        let applies = Bool::and(&filters);
        match rule.condition() {
            None => matched.push((rule, applies)),
            Some(expr) => {
                let v = expr.symbolic(&mut view);
                let is_bool = v.is(tag::BOOL);
                any_error.push(Bool::and(&[applies.clone(), is_bool.not()]));
                matched.push((rule, Bool::and(&[applies, v.truth()])));
            }
        }
    }
    let world = view.world;
    let _ = world;
    let of = |e: Effect| {
        Bool::or(
            &matched
                .iter()
                .filter(|(r, _)| r.effect() == e)
                .map(|(_, m)| m.clone())
                .collect::<Vec<_>>(),
        )
    };
    let deny = Bool::or(&[Bool::or(&any_error), of(Effect::Deny)]);
    let verdict = deny.ite(
        &int(0),
        &of(Effect::RequireApproval).ite(
            &int(1),
            &of(Effect::Allow).ite(&int(2), &int(verdict_code(policy.default_verdict()))),
        ),
    );

    // Obligations of matched modify rules: the first mode, the lowest limit.
    let mut mode = (Bool::from_bool(false), Str::from(""));
    for (rule, m) in matched.iter().rev() {
        if rule.effect() == Effect::Modify
            && let Some(set) = &rule.set().mode
        {
            mode = (
                m.ite(&Bool::from_bool(true), &mode.0),
                m.ite(&Str::from(set.as_str()), &mode.1),
            );
        }
    }
    let mut limits = BTreeMap::new();
    for (rule, m) in &matched {
        if rule.effect() != Effect::Modify {
            continue;
        }
        for (name, value) in &rule.set().limits {
            let v = symbolic::exact_real(*value).unwrap_or_else(|| symbolic::real(0));
            let (has, low): (Bool, Real) = limits
                .remove(name)
                .unwrap_or_else(|| (Bool::from_bool(false), v.clone()));
            let lower = Bool::or(&[has.not(), v.lt(&low)]);
            let new_low = Bool::and(&[m.clone(), lower]).ite(&v, &low);
            limits.insert(name.clone(), (Bool::or(&[has, m.clone()]), new_low));
        }
    }

    // The approval of require_approval rules: the highest quorum, the union of groups.
    let mut quorum = int(1);
    let mut any_approver = Vec::new();
    let mut groups: BTreeMap<String, Vec<Bool>> = BTreeMap::new();
    let mut permit_secs: Option<Int> = None;
    let mut permit_uses: Option<Int> = None;
    for (rule, m) in &matched {
        match rule.effect() {
            Effect::RequireApproval => {
                let a = rule.approval().cloned().unwrap_or_default();
                let q = int(i64::from(a.quorum));
                quorum = Bool::and(&[m.clone(), q.gt(&quorum)]).ite(&q, &quorum);
                if a.approvers.is_empty() {
                    any_approver.push(m.clone());
                }
                for g in &a.approvers {
                    groups.entry(g.clone()).or_default().push(m.clone());
                }
            }
            Effect::Allow => {
                let p = rule.permit().unwrap_or_default();
                let secs = int(i64::try_from(p.expires_in.as_secs()).unwrap_or(i64::MAX));
                let uses = int(i64::from(p.max_uses));
                // The strictest of the matched rules' settings; the defaults when none set one.
                if rule.permit().is_some() {
                    let big = int(i64::MAX);
                    let s = permit_secs.take().unwrap_or_else(|| big.clone());
                    let u = permit_uses.take().unwrap_or(big);
                    permit_secs = Some(Bool::and(&[m.clone(), secs.lt(&s)]).ite(&secs, &s));
                    permit_uses = Some(Bool::and(&[m.clone(), uses.lt(&u)]).ite(&uses, &u));
                }
            }
            _ => {}
        }
    }
    let defaults = crate::policy::PermitSettings::default();
    let dsecs = int(i64::try_from(defaults.expires_in.as_secs()).unwrap_or(i64::MAX));
    let duses = int(i64::from(defaults.max_uses));
    let big = int(i64::MAX);
    let permit_secs = permit_secs.map_or(dsecs.clone(), |s| s.eq(&big).ite(&dsecs, &s));
    let permit_uses = permit_uses.map_or(duses.clone(), |u| u.eq(&big).ite(&duses, &u));
    Encoded {
        verdict,
        mode,
        limits,
        quorum,
        any_approver: Bool::or(&any_approver),
        groups: groups
            .into_iter()
            .map(|(g, ms)| (g, Bool::or(&ms)))
            .collect(),
        permit_secs,
        permit_uses,
    }
}

fn limit_of(e: &Encoded, name: &str) -> (Bool, Real) {
    e.limits
        .get(name)
        .cloned()
        .unwrap_or_else(|| (Bool::from_bool(false), symbolic::real(0)))
}

fn group_of(e: &Encoded, name: &str) -> Bool {
    e.groups
        .get(name)
        .cloned()
        .unwrap_or_else(|| Bool::from_bool(false))
}

/// Some obligation of the same non-deny effect is weaker under `c` than under `l`.
fn weaker(l: &Encoded, c: &Encoded) -> Bool {
    let mut any = Vec::new();
    any.push(Bool::and(&[
        l.mode.0.clone(),
        Bool::or(&[c.mode.0.not(), c.mode.1.eq(&l.mode.1).not()]),
    ]));
    let names: BTreeSet<&String> = l.limits.keys().chain(c.limits.keys()).collect();
    for name in names {
        let ((lh, lv), (ch, cv)) = (limit_of(l, name), limit_of(c, name));
        any.push(Bool::and(&[lh, Bool::or(&[ch.not(), cv.gt(&lv)])]));
    }
    let approval = l.verdict.eq(int(1));
    any.push(Bool::and(&[approval.clone(), c.quorum.lt(&l.quorum)]));
    any.push(Bool::and(&[
        approval.clone(),
        c.any_approver.clone(),
        l.any_approver.not(),
    ]));
    let groups: BTreeSet<&String> = l.groups.keys().chain(c.groups.keys()).collect();
    for g in groups {
        any.push(Bool::and(&[
            approval.clone(),
            group_of(c, g),
            group_of(l, g).not(),
            l.any_approver.not(),
        ]));
    }
    let allow = l.verdict.eq(int(2));
    any.push(Bool::and(&[
        allow,
        Bool::or(&[
            c.permit_secs.gt(&l.permit_secs),
            c.permit_uses.gt(&l.permit_uses),
        ]),
    ]));
    Bool::or(&any)
}

fn more_permissive(l: &Encoded, c: &Encoded) -> Bool {
    let same = c.verdict.eq(&l.verdict);
    Bool::or(&[
        c.verdict.gt(&l.verdict),
        Bool::and(&[same, l.verdict.eq(int(0)).not(), weaker(l, c)]),
    ])
}

/// Any difference at all: another effect, or other obligations either way.
fn differs(l: &Encoded, c: &Encoded) -> Bool {
    let same = c.verdict.eq(&l.verdict);
    let live = l.verdict.eq(int(0)).not();
    Bool::or(&[
        same.not(),
        Bool::and(&[same.clone(), live.clone(), weaker(l, c)]),
        Bool::and(&[same, live, weaker(c, l)]),
    ])
}

/// Counterexamples from the solver's models that reproduce under evaluation.
fn examples(
    solver: &Solver,
    world: &World,
    live: &Policy,
    cand: &Policy,
    tenant: &str,
) -> Vec<Counterexample> {
    let mut out = Vec::new();
    let mut first = true;
    for _ in 0..ATTEMPTS {
        if out.len() == COUNTEREXAMPLES {
            break;
        }
        // The first model is the one the question found; each later one excludes the type
        // and agent of those before it.
        let model = if first || solver.check() == SatResult::Sat {
            solver.get_model()
        } else {
            None
        };
        first = false;
        let Some(model) = model else { break };
        let (action, now) = witness(&model, world);
        // Another type and agent next time.
        let ty = model.eval(&world.ty, true);
        let (has_agent, agent) = world.agent();
        let mut block = Vec::new();
        if let Some(ty) = ty {
            block.push(world.ty.eq(&ty).not());
        }
        if let (Some(h), Some(a)) = (model.eval(&has_agent, true), model.eval(&agent, true)) {
            block.push(Bool::or(&[has_agent.eq(&h).not(), agent.eq(&a).not()]));
        }
        solver.assert(Bool::or(&block));
        let (action, parsed) = match Action::from_value(action.clone()) {
            Ok(parsed) => (action, parsed),
            Err(_) => {
                let plain = plain_names(action);
                match Action::from_value(plain.clone()) {
                    Ok(parsed) => (plain, parsed),
                    Err(_) => continue,
                }
            }
        };
        let env = Env::new(tenant, now);
        let (l, c) = (live.evaluate(&parsed, &env), cand.evaluate(&parsed, &env));
        if reproduces(&l, &c) {
            out.push(Counterexample {
                action,
                live: side(&l),
                candidate: side(&c),
            });
        }
    }
    out
}

/// The witness with every name (type, agent, ids) made of characters an action accepts:
/// solvers pick any character, and a control character would make it no action at all. The
/// evaluation that follows decides whether it still reproduces.
fn plain_names(mut action: Value) -> Value {
    fn plain(s: &str, dots: bool) -> String {
        let mapped: String = s
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
                '.' if dots => c,
                _ => 'x',
            })
            .collect();
        if !dots {
            return mapped;
        }
        let segments: Vec<&str> = mapped
            .split('.')
            .map(|p| if p.is_empty() { "x" } else { p })
            .collect();
        segments.join(".")
    }
    if let Some(top) = action.as_object_mut() {
        for (key, value) in top.iter_mut() {
            match value {
                Value::String(s) => *s = plain(s, key == "type"),
                Value::Object(target) if key == "target" => {
                    for v in target.values_mut() {
                        if let Value::String(s) = v {
                            *s = plain(s, false);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    action
}

fn rank(v: Verdict) -> u8 {
    verdict_code(v) as u8
}

/// Whether `c` is more permissive than `l`, as the encoding defines it.
fn reproduces(l: &Decision, c: &Decision) -> bool {
    if rank(c.verdict) != rank(l.verdict) {
        return rank(c.verdict) > rank(l.verdict);
    }
    if l.verdict == Verdict::Deny {
        return false;
    }
    let (lo, co) = (&l.obligations, &c.obligations);
    if lo.mode.is_some() && co.mode != lo.mode {
        return true;
    }
    if lo
        .limits
        .iter()
        .any(|(k, v)| co.limits.get(k).is_none_or(|cv| cv > v))
    {
        return true;
    }
    if let (Some(la), Some(ca)) = (&l.approval, &c.approval) {
        let any = |a: &crate::policy::ApprovalRequirement| a.approvers.is_empty();
        if ca.quorum < la.quorum
            || (!any(la) && (any(ca) || ca.approvers.iter().any(|g| !la.approvers.contains(g))))
        {
            return true;
        }
    }
    if l.verdict == Verdict::Allow
        && let (Some(lp), Some(cp)) = (l.permit, c.permit)
    {
        return cp.expires_in > lp.expires_in || cp.max_uses > lp.max_uses;
    }
    false
}

fn side(d: &Decision) -> Side {
    Side {
        effect: d.verdict,
        rules: d
            .reasons
            .iter()
            .filter_map(|r| r.rule.as_ref().map(|id| id.to_string()))
            .collect(),
    }
}

/// The model as an action and a time.
fn witness(model: &z3::Model, world: &World) -> (Value, Timestamp) {
    let truth = |b: &Bool| {
        model
            .eval(b, true)
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    };
    let text = |s: &Str| {
        model
            .eval(s, true)
            .and_then(|v| v.as_string())
            .map(|t| unescape(&t))
            .unwrap_or_default()
    };
    let real = |r: &Real| model.eval(r, true).map(|v| v.approx_f64()).unwrap_or(0.0);
    let whole = |i: &Int| model.eval(i, true).and_then(|v| v.as_i64()).unwrap_or(0);
    let mut action = Map::new();
    action.insert("type".into(), Value::String(text(&world.ty)));
    let mut target = Map::new();
    for (f, (has, v)) in &world.texts {
        if !truth(has) {
            continue;
        }
        let value = Value::String(text(v));
        match f {
            ActionField::TargetType => {
                target.insert("type".into(), value);
            }
            ActionField::TargetId => {
                target.insert("id".into(), value);
            }
            other => {
                action.insert(other.name().into(), value);
            }
        }
    }
    if truth(&world.target) || !target.is_empty() {
        action.insert("target".into(), Value::Object(target));
    }
    if truth(&world.confidence.0) {
        action.insert("confidence".into(), number(real(&world.confidence.1)));
    }
    let mut usage = Map::new();
    if truth(&world.tokens.0) {
        usage.insert("tokens".into(), Value::from(whole(&world.tokens.1)));
    }
    if truth(&world.tool_calls.0) {
        usage.insert("tool_calls".into(), Value::from(whole(&world.tool_calls.1)));
    }
    if truth(&world.cost.0) {
        usage.insert("cost_usd".into(), number(real(&world.cost.1)));
    }
    if truth(&world.usage) || !usage.is_empty() {
        action.insert("usage".into(), Value::Object(usage));
    }
    for root in [ActionField::Payload, ActionField::Context] {
        if let Some(v) = json_value(model, world, root, &[])
            && !v.is_null()
        {
            action.insert(root.name().into(), v);
        }
    }
    let now = Timestamp::from_unix_millis(whole(&world.now_ms)).unwrap_or_default();
    (Value::Object(action), now)
}

/// A scalar value as the model gives it; `None` for containers.
fn scalar(model: &z3::Model, v: &Sv) -> Option<Value> {
    let t = model.eval(&v.tag, true)?.as_i64()?;
    Some(match t {
        tag::NULL => Value::Null,
        tag::BOOL => Value::Bool(model.eval(&v.b, true)?.as_bool()?),
        tag::STR => Value::String(unescape(&model.eval(&v.s, true)?.as_string()?)),
        tag::NUM => {
            let n = model.eval(&v.n, true)?;
            match model.eval(&v.k, true)?.as_i64()? {
                kind::DBL => number(n.approx_f64()),
                _ => Value::from(n.as_rational().filter(|(_, d)| *d == 1)?.0),
            }
        }
        _ => return None,
    })
}

/// A string as Z3 prints a model's: `\u{XX}` for characters outside printable ASCII.
fn unescape(z3: &str) -> String {
    let mut out = String::with_capacity(z3.len());
    let mut rest = z3;
    while let Some(at) = rest.find("\\u{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        match after.find('}').and_then(|end| {
            let c = u32::from_str_radix(&after[..end], 16)
                .ok()
                .and_then(char::from_u32)?;
            Some((c, end))
        }) {
            Some((c, end)) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("\\u{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The JSON value the model gives the cell at `steps`, with its present children.
fn json_value(
    model: &z3::Model,
    world: &World,
    root: ActionField,
    steps: &[String],
) -> Option<Value> {
    let cell = world.cells.get(&(root, steps.to_vec()))?;
    let truth = |b: &Bool| {
        model
            .eval(b, true)
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    };
    if !truth(&cell.present) {
        return None;
    }
    let v = &cell.value;
    let t = model
        .eval(&v.tag, true)
        .and_then(|t| t.as_i64())
        .unwrap_or(tag::NULL);
    Some(match t {
        tag::BOOL => Value::Bool(truth(&v.b)),
        tag::NUM => {
            let k = model
                .eval(&v.k, true)
                .and_then(|k| k.as_i64())
                .unwrap_or(kind::INT);
            let whole = model.eval(&cell.whole, true);
            match k {
                kind::DBL => number(
                    model
                        .eval(&cell.fraction, true)
                        .map_or(0.0, |n| n.approx_f64()),
                ),
                kind::UINT => Value::from(whole.and_then(|n| n.as_u64()).unwrap_or(u64::MAX)),
                _ => Value::from(whole.and_then(|n| n.as_i64()).unwrap_or(0)),
            }
        }
        tag::STR => Value::String(
            model
                .eval(&v.s, true)
                .and_then(|s| s.as_string())
                .map(|t| unescape(&t))
                .unwrap_or_default(),
        ),
        // What the model says the list holds, of what was asked about it.
        tag::LIST => {
            let h = model.eval(&v.h, true).and_then(|h| h.as_i64());
            let mut items = Vec::new();
            for (list, item, answer) in &world.members {
                if h.is_some()
                    && model.eval(list, true).and_then(|l| l.as_i64()) == h
                    && truth(answer)
                {
                    items.extend(scalar(model, item));
                }
            }
            items.dedup();
            Value::Array(items)
        }
        tag::MAP => {
            let mut map = Map::new();
            for ((r, path), _) in world.cells.range((root, steps.to_vec())..) {
                if *r != root || path.len() != steps.len() + 1 || !path.starts_with(steps) {
                    continue;
                }
                if let Some(child) = json_value(model, world, root, path) {
                    map.insert(path[steps.len()].clone(), child);
                }
            }
            Value::Object(map)
        }
        _ => Value::Null,
    })
}

#[cfg(test)]
mod unit {
    #[test]
    fn model_strings_are_read_back_with_their_characters() {
        assert_eq!(
            super::unescape("support-\\u{80}x\\u{1f600}"),
            "support-\u{80}x\u{1f600}"
        );
        assert_eq!(super::unescape("plain"), "plain");
        assert_eq!(super::unescape("bad\\u{zz}"), "bad\\u{zz}");
    }
}
