//! CEL conditions and reason templates, compiled to a tree that evaluates directly against
//! the borrowed action.
//!
//! The `cel` crate parses (so the syntax, macros and error positions are real CEL); we then
//! resolve every variable path at compile time (`action.confidence` becomes a typed field
//! read, `context.user.role` a walk over borrowed JSON) and evaluate without converting the
//! input into CEL values. That is what keeps a decision under a microsecond: the `cel`
//! interpreter spends more than that converting one action (see docs/BENCHMARKS.md).
//!
//! Semantics follow CEL where it matters for policy: `&&`/`||` absorb errors when the other
//! side decides, a missing key is an error, heterogeneous equality is `false`. Two documented
//! relaxations suit JSON input: numbers of different kinds compare and combine by value, and
//! `now` is an int of Unix seconds.

use crate::action::Action;
use crate::action::Env;
use cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr as Ast, IdedExpr, LiteralValue,
};
use regex::Regex;
use serde_json::{Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::rc::Rc;

/// Longest condition source accepted.
const MAX_SOURCE: usize = 4096;
/// Deepest bracket nesting in a condition's source (guards the parser's recursion).
const MAX_BRACKETS: usize = 32;
/// Deepest compiled tree (guards the evaluator's recursion).
const MAX_TREE_DEPTH: usize = 96;
/// Comprehension iterations one evaluation may spend before failing closed.
const ITERATION_BUDGET: u32 = 10_000;

/// A condition or template expression that does not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// What is wrong, in words.
    pub message: String,
    /// 1-based line and column within the expression, when known.
    pub position: Option<(usize, usize)>,
}

impl ExprError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            position: None,
        }
    }
}

/// Why an expression could not be evaluated for one action. The text is for the server log;
/// callers of the service only learn that evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(String);

fn fail<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(message.into()))
}

/// The variables an expression can read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vars<'a> {
    pub action: &'a Action,
    pub agent: Option<&'a str>,
    pub tier: Option<&'a str>,
    pub env: &'a Env,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub(crate) struct Expr {
    node: Node,
}

impl Expr {
    /// Parses and compiles CEL source.
    pub(crate) fn compile(source: &str) -> Result<Self, ExprError> {
        if source.len() > MAX_SOURCE {
            return Err(ExprError::new(format!(
                "is longer than {MAX_SOURCE} characters"
            )));
        }
        if bracket_depth(source) > MAX_BRACKETS {
            return Err(ExprError::new(format!(
                "nests brackets deeper than {MAX_BRACKETS} levels"
            )));
        }
        let ast = cel::parser::Parser::new().parse(source).map_err(|errors| {
            let first = errors.errors.first();
            ExprError {
                message: first.map_or_else(
                    || "is not valid CEL".to_owned(),
                    |e| format!("is not valid CEL: {}", e.msg),
                ),
                position: first.and_then(|e| {
                    let (line, col) = e.pos;
                    Some((usize::try_from(line).ok()?, usize::try_from(col).ok()? + 1))
                }),
            }
        })?;
        if tree_depth(&ast, 0) > MAX_TREE_DEPTH {
            return Err(ExprError::new(format!(
                "nests deeper than {MAX_TREE_DEPTH} levels"
            )));
        }
        let node = Compiler::default().compile(&ast)?;
        Ok(Self { node })
    }

    /// Evaluates to a boolean; anything else is an error.
    pub(crate) fn eval_bool(&self, vars: &Vars<'_>) -> Result<bool, EvalError> {
        let mut cx = Cx::default();
        match self.node.eval(&mut cx, vars)? {
            Val::Bool(b) => Ok(b),
            other => fail(format!(
                "condition evaluated to {}, not a bool",
                other.type_name()
            )),
        }
    }

    /// Evaluates and appends the value as text, for reason templates.
    pub(crate) fn render(&self, vars: &Vars<'_>, out: &mut String) -> Result<(), EvalError> {
        let mut cx = Cx::default();
        let value = self.node.eval(&mut cx, vars)?;
        value.write_text(out);
        Ok(())
    }
}

fn bracket_depth(source: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in source.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Depth of the parsed tree, giving up as soon as it passes the limit.
fn tree_depth(e: &IdedExpr, depth: usize) -> usize {
    if depth > MAX_TREE_DEPTH {
        return depth;
    }
    let next = depth + 1;
    let children: Vec<&IdedExpr> = match &e.expr {
        Ast::Call(call) => call
            .target
            .iter()
            .map(|t| &**t)
            .chain(call.args.iter())
            .collect(),
        Ast::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Ast::List(list) => list.elements.iter().collect(),
        Ast::Map(map) => map
            .entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Ast::Select(select) => vec![&*select.operand],
        _ => Vec::new(),
    };
    children
        .into_iter()
        .map(|c| tree_depth(c, next))
        .max()
        .unwrap_or(depth)
}

// ---------------------------------------------------------------------------------------------
// Compiled form

/// A variable path's starting point, resolved at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    /// Bare `action`: only ever the start of a path, never a value.
    Action,
    ActionType,
    ActionId,
    ActionTarget,
    ActionTargetType,
    ActionTargetId,
    ActionConfidence,
    ActionMode,
    ActionAgent,
    ActionOnBehalfOf,
    ActionApp,
    ActionWorkflow,
    ActionRunId,
    ActionPayload,
    ActionContext,
    ActionUsage,
    ActionUsageTokens,
    ActionUsageCost,
    ActionUsageToolCalls,
    Context,
    Agent,
    AgentId,
    AgentTier,
    Tenant,
    Now,
}

const ROOTS: &str = "`action`, `context`, `agent`, `tenant` or `now`";

const ACTION_FIELDS: &[(&str, Root)] = &[
    ("type", Root::ActionType),
    ("id", Root::ActionId),
    ("target", Root::ActionTarget),
    ("confidence", Root::ActionConfidence),
    ("mode", Root::ActionMode),
    ("agent", Root::ActionAgent),
    ("on_behalf_of", Root::ActionOnBehalfOf),
    ("app", Root::ActionApp),
    ("workflow", Root::ActionWorkflow),
    ("run_id", Root::ActionRunId),
    ("payload", Root::ActionPayload),
    ("context", Root::ActionContext),
    ("usage", Root::ActionUsage),
];

impl Root {
    /// The typed field below this one, if the path continues into a known struct.
    fn field(self, name: &str) -> Result<Option<Root>, ExprError> {
        let unknown = |what: &str, fields: &str| {
            Err(ExprError::new(format!(
                "`{what}` has no field `{name}`; it has {fields}"
            )))
        };
        match self {
            Root::Action => match ACTION_FIELDS.iter().find(|(f, _)| *f == name) {
                Some((_, root)) => Ok(Some(*root)),
                None => unknown(
                    "action",
                    "`type`, `id`, `target`, `confidence`, `mode`, `agent`, `on_behalf_of`, `app`, \
                     `workflow`, `run_id`, `payload`, `context` and `usage`",
                ),
            },
            Root::ActionTarget => match name {
                "type" => Ok(Some(Root::ActionTargetType)),
                "id" => Ok(Some(Root::ActionTargetId)),
                _ => unknown("action.target", "`type` and `id`"),
            },
            Root::ActionUsage => match name {
                "tokens" => Ok(Some(Root::ActionUsageTokens)),
                "cost_usd" => Ok(Some(Root::ActionUsageCost)),
                "tool_calls" => Ok(Some(Root::ActionUsageToolCalls)),
                _ => unknown("action.usage", "`tokens`, `cost_usd` and `tool_calls`"),
            },
            Root::Agent => match name {
                "id" => Ok(Some(Root::AgentId)),
                "tier" => Ok(Some(Root::AgentTier)),
                _ => unknown("agent", "`id` and `tier`"),
            },
            _ => Ok(None),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Root::Action => "action",
            Root::ActionType => "action.type",
            Root::ActionId => "action.id",
            Root::ActionTarget => "action.target",
            Root::ActionTargetType => "action.target.type",
            Root::ActionTargetId => "action.target.id",
            Root::ActionConfidence => "action.confidence",
            Root::ActionMode => "action.mode",
            Root::ActionAgent => "action.agent",
            Root::ActionOnBehalfOf => "action.on_behalf_of",
            Root::ActionApp => "action.app",
            Root::ActionWorkflow => "action.workflow",
            Root::ActionRunId => "action.run_id",
            Root::ActionPayload => "action.payload",
            Root::ActionContext => "action.context",
            Root::ActionUsage => "action.usage",
            Root::ActionUsageTokens => "action.usage.tokens",
            Root::ActionUsageCost => "action.usage.cost_usd",
            Root::ActionUsageToolCalls => "action.usage.tool_calls",
            Root::Context => "context",
            Root::Agent => "agent",
            Root::AgentId => "agent.id",
            Root::AgentTier => "agent.tier",
            Root::Tenant => "tenant",
            Root::Now => "now",
        }
    }

    /// The value, or `None` when the action does not carry it.
    fn get<'a>(self, v: &Vars<'a>) -> Option<Val<'a>> {
        let a = v.action;
        let s = |x: &'a Option<String>| x.as_deref().map(|s| Val::Str(Cow::Borrowed(s)));
        let target = a.target.as_ref();
        let usage = a.usage.as_ref();
        match self {
            Root::Action => None,
            Root::ActionType => Some(Val::Str(Cow::Borrowed(a.kind.as_str()))),
            Root::ActionId => s(&a.id),
            Root::ActionTarget => target.map(|t| {
                let mut entries = Vec::new();
                if let Some(kind) = &t.kind {
                    entries.push((
                        Val::Str(Cow::Borrowed("type")),
                        Val::Str(Cow::Borrowed(kind)),
                    ));
                }
                if let Some(id) = &t.id {
                    entries.push((Val::Str(Cow::Borrowed("id")), Val::Str(Cow::Borrowed(id))));
                }
                Val::Map(Rc::new(entries))
            }),
            Root::ActionTargetType => target.and_then(|t| s(&t.kind)),
            Root::ActionTargetId => target.and_then(|t| s(&t.id)),
            Root::ActionConfidence => a.confidence.map(|c| Val::Double(c.get())),
            Root::ActionMode => s(&a.mode),
            Root::ActionAgent => s(&a.agent),
            Root::ActionOnBehalfOf => s(&a.on_behalf_of),
            Root::ActionApp => s(&a.app),
            Root::ActionWorkflow => s(&a.workflow),
            Root::ActionRunId => s(&a.run_id),
            Root::ActionPayload => (!a.payload.is_null()).then(|| Val::from_json(&a.payload)),
            Root::ActionContext | Root::Context => {
                (!a.context.is_null()).then(|| Val::from_json(&a.context))
            }
            Root::ActionUsage => usage.map(|u| {
                let mut entries = Vec::new();
                let mut put = |k: &'static str, v: Option<Val<'a>>| {
                    if let Some(v) = v {
                        entries.push((Val::Str(Cow::Borrowed(k)), v));
                    }
                };
                put("tokens", u.tokens.map(Val::UInt));
                put("cost_usd", u.cost_usd.map(Val::Double));
                put("tool_calls", u.tool_calls.map(Val::UInt));
                Val::Map(Rc::new(entries))
            }),
            Root::ActionUsageTokens => usage.and_then(|u| u.tokens).map(Val::UInt),
            Root::ActionUsageCost => usage.and_then(|u| u.cost_usd).map(Val::Double),
            Root::ActionUsageToolCalls => usage.and_then(|u| u.tool_calls).map(Val::UInt),
            Root::Agent => {
                let mut entries = Vec::new();
                if let Some(id) = v.agent {
                    entries.push((Val::Str(Cow::Borrowed("id")), Val::Str(Cow::Borrowed(id))));
                }
                if let Some(tier) = v.tier {
                    entries.push((
                        Val::Str(Cow::Borrowed("tier")),
                        Val::Str(Cow::Borrowed(tier)),
                    ));
                }
                Some(Val::Map(Rc::new(entries)))
            }
            Root::AgentId => v.agent.map(|x| Val::Str(Cow::Borrowed(x))),
            Root::AgentTier => v.tier.map(|x| Val::Str(Cow::Borrowed(x))),
            Root::Tenant => Some(Val::Str(Cow::Borrowed(v.env.tenant.as_str()))),
            Root::Now => Some(Val::Int(v.env.now)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    In,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrFn {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnFn {
    Size,
    Int,
    Double,
    String,
    Lower,
    Upper,
    NotStrictlyFalse,
}

#[derive(Debug, Clone)]
enum Node {
    /// A literal; lists and maps of literals are folded into one JSON value.
    Const(Value),
    /// A variable path: a typed root, then JSON field steps.
    Path(Root, Box<[Box<str>]>),
    /// `has(...)` on a typed root: whether the action carries the field.
    Present(Root),
    Local(usize),
    Select(Box<Node>, Box<str>),
    Has(Box<Node>, Box<str>),
    Index(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Str(StrFn, Box<Node>, Box<Node>),
    Unary(UnFn, Box<Node>),
    Matches(Box<Node>, Box<Regex>),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Comprehension(Box<Comprehension>),
}

#[derive(Debug, Clone)]
struct Comprehension {
    range: Node,
    iter_slot: usize,
    accu_slot: usize,
    init: Node,
    cond: Node,
    step: Node,
    result: Node,
}

#[derive(Default)]
struct Compiler {
    /// Comprehension variables in scope, innermost last; the index is the slot.
    scope: Vec<String>,
}

impl Compiler {
    fn compile(&mut self, e: &IdedExpr) -> Result<Node, ExprError> {
        match &e.expr {
            Ast::Literal(lit) => Ok(Node::Const(literal(lit)?)),
            Ast::Ident(name) => self.ident(name),
            Ast::Select(select) => {
                if select.test {
                    if let Some(root) = self.static_root(&select.operand.expr)?
                        && let Some(field) = root.field(&select.field)?
                    {
                        return Ok(Node::Present(field));
                    }
                    let operand = self.compile(&select.operand)?;
                    return Ok(Node::Has(Box::new(operand), select.field.as_str().into()));
                }
                if let Some(root) = self.static_root(&select.operand.expr)?
                    && let Some(field) = root.field(&select.field)?
                {
                    return Ok(Node::Path(field, Box::new([])));
                }
                let operand = self.compile(&select.operand)?;
                Ok(match operand {
                    Node::Path(root, steps) if steps.is_empty() => {
                        match root.field(&select.field)? {
                            Some(field) => Node::Path(field, Box::new([])),
                            None if matches!(
                                root,
                                Root::ActionPayload | Root::ActionContext | Root::Context
                            ) =>
                            {
                                Node::Path(root, Box::new([select.field.as_str().into()]))
                            }
                            None => Node::Select(
                                Box::new(Node::Path(root, steps)),
                                select.field.as_str().into(),
                            ),
                        }
                    }
                    Node::Path(root, steps) => {
                        let mut steps = steps.into_vec();
                        steps.push(select.field.as_str().into());
                        Node::Path(root, steps.into_boxed_slice())
                    }
                    other => Node::Select(Box::new(other), select.field.as_str().into()),
                })
            }
            Ast::Call(call) => self.call(call),
            Ast::List(list) => {
                if !list.optional_indices.is_empty() {
                    return Err(ExprError::new("optional list elements are not supported"));
                }
                let items = list
                    .elements
                    .iter()
                    .map(|x| self.compile(x))
                    .collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(|n| matches!(n, Node::Const(_))) {
                    let values = items
                        .into_iter()
                        .filter_map(|n| {
                            if let Node::Const(v) = n {
                                Some(v)
                            } else {
                                None
                            }
                        })
                        .collect();
                    return Ok(Node::Const(Value::Array(values)));
                }
                Ok(Node::List(items))
            }
            Ast::Map(map) => {
                let mut entries = Vec::with_capacity(map.entries.len());
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) if !m.optional => {
                            entries.push((self.compile(&m.key)?, self.compile(&m.value)?));
                        }
                        _ => return Err(ExprError::new("only plain map literals are supported")),
                    }
                }
                Ok(Node::Map(entries))
            }
            Ast::Comprehension(c) => self.comprehension(c),
            Ast::Struct(s) => Err(ExprError::new(format!(
                "message construction `{}{{…}}` is not supported",
                s.type_name
            ))),
            Ast::Unspecified => Err(ExprError::new("is not a complete expression")),
        }
    }

    fn ident(&self, name: &str) -> Result<Node, ExprError> {
        if let Some(slot) = self.scope.iter().rposition(|n| n == name) {
            return Ok(Node::Local(slot));
        }
        let root = match name {
            "action" => {
                return Err(ExprError::new(
                    "`action` must be followed by a field, e.g. `action.type` or `action.payload.amount`",
                ));
            }
            "context" => Root::Context,
            "agent" => Root::Agent,
            "tenant" => Root::Tenant,
            "now" => Root::Now,
            _ => {
                return Err(ExprError::new(format!(
                    "unknown variable `{name}`; expected {ROOTS}"
                )));
            }
        };
        Ok(Node::Path(root, Box::new([])))
    }

    /// The typed root an expression names, if it is one (`action`, `agent`, `action.target`):
    /// such paths resolve to struct fields at compile time.
    fn static_root(&self, e: &Ast) -> Result<Option<Root>, ExprError> {
        let shadowed = |name: &str| self.scope.iter().any(|n| n == name);
        match e {
            Ast::Ident(name) if name == "action" && !shadowed(name) => Ok(Some(Root::Action)),
            Ast::Ident(name) if name == "agent" && !shadowed(name) => Ok(Some(Root::Agent)),
            Ast::Select(s) if !s.test => match self.static_root(&s.operand.expr)? {
                Some(root) => root.field(&s.field),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    fn call(&mut self, call: &CallExpr) -> Result<Node, ExprError> {
        use cel::common::ast::operators as op;
        let name = call.func_name.as_str();
        let args = &call.args;
        if let Some(target) = &call.target {
            let recv = self.compile(target)?;
            return self.method(name, recv, args);
        }
        let binop = match name {
            op::EQUALS => Some(BinOp::Eq),
            op::NOT_EQUALS => Some(BinOp::Ne),
            op::LESS => Some(BinOp::Lt),
            op::LESS_EQUALS => Some(BinOp::Le),
            op::GREATER => Some(BinOp::Gt),
            op::GREATER_EQUALS => Some(BinOp::Ge),
            op::ADD => Some(BinOp::Add),
            op::SUBSTRACT => Some(BinOp::Sub),
            op::MULTIPLY => Some(BinOp::Mul),
            op::DIVIDE => Some(BinOp::Div),
            op::MODULO => Some(BinOp::Rem),
            op::IN => Some(BinOp::In),
            _ => None,
        };
        if let Some(o) = binop {
            let (a, b) = self.pair(name, args)?;
            return Ok(Node::Binary(o, a, b));
        }
        match name {
            op::LOGICAL_AND => self.pair(name, args).map(|(a, b)| Node::And(a, b)),
            op::LOGICAL_OR => self.pair(name, args).map(|(a, b)| Node::Or(a, b)),
            op::INDEX => self.pair(name, args).map(|(a, b)| Node::Index(a, b)),
            op::LOGICAL_NOT => Ok(Node::Not(Box::new(self.single(name, args)?))),
            op::NEGATE => Ok(Node::Neg(Box::new(self.single(name, args)?))),
            op::NOT_STRICTLY_FALSE => Ok(Node::Unary(
                UnFn::NotStrictlyFalse,
                Box::new(self.single(name, args)?),
            )),
            op::CONDITIONAL => match args.as_slice() {
                [c, t, f] => Ok(Node::Cond(
                    Box::new(self.compile(c)?),
                    Box::new(self.compile(t)?),
                    Box::new(self.compile(f)?),
                )),
                _ => Err(ExprError::new("the conditional takes three operands")),
            },
            "size" => Ok(Node::Unary(UnFn::Size, Box::new(self.single(name, args)?))),
            "int" => Ok(Node::Unary(UnFn::Int, Box::new(self.single(name, args)?))),
            "double" => Ok(Node::Unary(
                UnFn::Double,
                Box::new(self.single(name, args)?),
            )),
            "string" => Ok(Node::Unary(
                UnFn::String,
                Box::new(self.single(name, args)?),
            )),
            "matches" => match args.as_slice() {
                [s, re] => {
                    let recv = self.compile(s)?;
                    self.method("matches", recv, std::slice::from_ref(re))
                }
                _ => Err(ExprError::new("`matches` takes two arguments")),
            },
            _ => Err(ExprError::new(format!("unknown function `{name}`"))),
        }
    }

    fn pair(&mut self, name: &str, args: &[IdedExpr]) -> Result<(Box<Node>, Box<Node>), ExprError> {
        match args {
            [a, b] => Ok((Box::new(self.compile(a)?), Box::new(self.compile(b)?))),
            _ => Err(ExprError::new(format!("`{name}` takes two arguments"))),
        }
    }

    fn single(&mut self, name: &str, args: &[IdedExpr]) -> Result<Node, ExprError> {
        match args {
            [a] => self.compile(a),
            _ => Err(ExprError::new(format!("`{name}` takes one argument"))),
        }
    }

    fn method(&mut self, name: &str, recv: Node, args: &[IdedExpr]) -> Result<Node, ExprError> {
        let recv = Box::new(recv);
        let str_fn = |this: &mut Self, f: StrFn| match args {
            [a] => Ok(Node::Str(f, recv.clone(), Box::new(this.compile(a)?))),
            _ => Err(ExprError::new(format!("`{name}` takes one argument"))),
        };
        match name {
            "startsWith" => str_fn(self, StrFn::StartsWith),
            "endsWith" => str_fn(self, StrFn::EndsWith),
            "contains" => str_fn(self, StrFn::Contains),
            "matches" => match args {
                [
                    IdedExpr {
                        expr: Ast::Literal(LiteralValue::String(pattern)),
                        ..
                    },
                ] => {
                    let pattern: &str = pattern.inner();
                    let re = regex::RegexBuilder::new(pattern)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| {
                            ExprError::new(format!("invalid regular expression `{pattern}`: {e}"))
                        })?;
                    Ok(Node::Matches(recv, Box::new(re)))
                }
                _ => Err(ExprError::new("`matches` needs a string literal pattern")),
            },
            "size" if args.is_empty() => Ok(Node::Unary(UnFn::Size, recv)),
            "lowerAscii" if args.is_empty() => Ok(Node::Unary(UnFn::Lower, recv)),
            "upperAscii" if args.is_empty() => Ok(Node::Unary(UnFn::Upper, recv)),
            _ => Err(ExprError::new(format!("unknown method `{name}`"))),
        }
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) -> Result<Node, ExprError> {
        if c.iter_var2.is_some() {
            return Err(ExprError::new(
                "two-variable comprehensions are not supported",
            ));
        }
        let range = self.compile(&c.iter_range)?;
        let init = self.compile(&c.accu_init)?;
        let base = self.scope.len();
        self.scope.push(c.iter_var.clone());
        self.scope.push(c.accu_var.clone());
        let body = (|| {
            Ok((
                self.compile(&c.loop_cond)?,
                self.compile(&c.loop_step)?,
                self.compile(&c.result)?,
            ))
        })();
        self.scope.truncate(base);
        let (cond, step, result) = body?;
        Ok(Node::Comprehension(Box::new(Comprehension {
            range,
            iter_slot: base,
            accu_slot: base + 1,
            init,
            cond,
            step,
            result,
        })))
    }
}

fn literal(lit: &LiteralValue) -> Result<Value, ExprError> {
    Ok(match lit {
        LiteralValue::Boolean(b) => Value::Bool(**b),
        LiteralValue::Int(i) => Value::Number(Number::from(**i)),
        LiteralValue::UInt(u) => Value::Number(Number::from(**u)),
        LiteralValue::Double(d) => Number::from_f64(**d)
            .map(Value::Number)
            .ok_or_else(|| ExprError::new("non-finite number literal"))?,
        LiteralValue::String(s) => Value::String(s.inner().to_owned()),
        LiteralValue::Null => Value::Null,
        LiteralValue::Bytes(_) => return Err(ExprError::new("bytes literals are not supported")),
    })
}

// ---------------------------------------------------------------------------------------------
// Values and evaluation

/// A runtime value. Input strings, lists and maps are borrowed, never copied.
#[derive(Debug, Clone)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Cow<'a, str>),
    /// A JSON array or object from the input or a folded literal.
    Json(&'a Value),
    List(Rc<Vec<Val<'a>>>),
    Map(Rc<Vec<(Val<'a>, Val<'a>)>>),
}

impl<'a> Val<'a> {
    fn from_json(v: &'a Value) -> Self {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Val::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Val::UInt(u)
                } else {
                    Val::Double(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => Val::Json(v),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::UInt(_) => "uint",
            Val::Double(_) => "double",
            Val::Str(_) => "string",
            Val::Json(Value::Array(_)) | Val::List(_) => "list",
            Val::Json(_) | Val::Map(_) => "map",
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::UInt(u) => Some(*u as f64),
            Val::Double(d) => Some(*d),
            _ => None,
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, Val::Int(_) | Val::UInt(_) | Val::Double(_))
    }

    fn list_len(&self) -> Option<usize> {
        match self {
            Val::Json(Value::Array(items)) => Some(items.len()),
            Val::List(items) => Some(items.len()),
            _ => None,
        }
    }

    fn list_get(&self, i: usize) -> Option<Val<'a>> {
        match self {
            Val::Json(Value::Array(items)) => items.get(i).map(Val::from_json),
            Val::List(items) => items.get(i).cloned(),
            _ => None,
        }
    }

    /// Looks a key up in a map value; `Err` when the value is not a map.
    fn map_get(&self, key: &Val<'_>) -> Result<Option<Val<'a>>, EvalError> {
        match self {
            Val::Json(Value::Object(map)) => Ok(match key {
                Val::Str(k) => map.get(k.as_ref()).map(Val::from_json),
                _ => None,
            }),
            Val::Map(entries) => Ok(entries
                .iter()
                .find(|(k, _)| equal(k, key))
                .map(|(_, v)| v.clone())),
            other => fail(format!("cannot look up a key in {}", other.type_name())),
        }
    }

    fn map_len(&self) -> Option<usize> {
        match self {
            Val::Json(Value::Object(map)) => Some(map.len()),
            Val::Map(entries) => Some(entries.len()),
            _ => None,
        }
    }

    fn write_text(&self, out: &mut String) {
        match self {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Val::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            Val::Double(d) => {
                let _ = write!(out, "{d}");
            }
            Val::Str(s) => out.push_str(s),
            Val::Json(v) => out.push_str(&v.to_string()),
            Val::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_text(out);
                }
                out.push(']');
            }
            Val::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_text(out);
                    out.push_str(": ");
                    v.write_text(out);
                }
                out.push('}');
            }
        }
    }
}

/// CEL equality: numbers by value across kinds, containers element by element, values of
/// different types unequal.
fn equal(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::UInt(x), Val::UInt(y)) => x == y,
        (Val::Int(x), Val::UInt(y)) | (Val::UInt(y), Val::Int(x)) => {
            u64::try_from(*x).is_ok_and(|x| x == *y)
        }
        _ if a.is_number() && b.is_number() => a.as_f64() == b.as_f64(),
        _ => match (a.list_len(), b.list_len()) {
            (Some(n), Some(m)) => {
                n == m
                    && (0..n).all(|i| match (a.list_get(i), b.list_get(i)) {
                        (Some(x), Some(y)) => equal(&x, &y),
                        _ => false,
                    })
            }
            _ => match (a.map_len(), b.map_len()) {
                (Some(n), Some(m)) if n == m => map_entries(a)
                    .into_iter()
                    .all(|(k, v)| matches!(b.map_get(&k), Ok(Some(w)) if equal(&v, &w))),
                _ => false,
            },
        },
    }
}

fn map_entries<'a>(v: &Val<'a>) -> Vec<(Val<'a>, Val<'a>)> {
    match v {
        Val::Json(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| (Val::Str(Cow::Borrowed(k.as_str())), Val::from_json(v)))
            .collect(),
        Val::Map(entries) => entries.as_ref().clone(),
        _ => Vec::new(),
    }
}

fn compare(a: &Val<'_>, b: &Val<'_>) -> Result<Ordering, EvalError> {
    let ordering = match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::UInt(x), Val::UInt(y)) => Some(x.cmp(y)),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        _ if a.is_number() && b.is_number() => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        _ => None,
    };
    match ordering {
        Some(o) => Ok(o),
        None => fail(format!(
            "cannot compare {} with {}",
            a.type_name(),
            b.type_name()
        )),
    }
}

#[derive(Default)]
struct Cx<'a> {
    locals: Vec<Val<'a>>,
    budget_used: u32,
}

impl Node {
    fn eval<'a>(&'a self, cx: &mut Cx<'a>, v: &Vars<'a>) -> Result<Val<'a>, EvalError> {
        match self {
            Node::Const(value) => Ok(Val::from_json(value)),
            Node::Path(root, steps) => eval_path(*root, steps, v),
            Node::Present(root) => Ok(Val::Bool(root.get(v).is_some())),
            Node::Local(slot) => match cx.locals.get(*slot) {
                Some(val) => Ok(val.clone()),
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
                let key = index.eval(cx, v)?;
                if base.list_len().is_some() {
                    let i = match key {
                        Val::Int(i) => usize::try_from(i).ok(),
                        Val::UInt(u) => usize::try_from(u).ok(),
                        Val::Double(d) if d.fract() == 0.0 && d >= 0.0 => Some(d as usize),
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
                match base.map_get(&key)? {
                    Some(val) => Ok(val),
                    None => fail("no such key in map"),
                }
            }
            Node::Not(x) => match x.eval(cx, v)? {
                Val::Bool(b) => Ok(Val::Bool(!b)),
                other => fail(format!("`!` needs a bool, not {}", other.type_name())),
            },
            Node::Neg(x) => match x.eval(cx, v)? {
                Val::Int(i) => i
                    .checked_neg()
                    .map(Val::Int)
                    .ok_or_else(|| EvalError("integer overflow".into())),
                Val::Double(d) => Ok(Val::Double(-d)),
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
                binary(*op, x, y)
            }
            Node::Str(f, a, b) => {
                let (x, y) = (a.eval(cx, v)?, b.eval(cx, v)?);
                let (Val::Str(x), Val::Str(y)) = (&x, &y) else {
                    return fail(format!(
                        "string function applied to {} and {}",
                        x.type_name(),
                        y.type_name()
                    ));
                };
                Ok(Val::Bool(match f {
                    StrFn::StartsWith => x.starts_with(y.as_ref()),
                    StrFn::EndsWith => x.ends_with(y.as_ref()),
                    StrFn::Contains => x.contains(y.as_ref()),
                }))
            }
            Node::Matches(a, re) => match a.eval(cx, v)? {
                Val::Str(s) => Ok(Val::Bool(re.is_match(&s))),
                other => fail(format!(
                    "`matches` needs a string, not {}",
                    other.type_name()
                )),
            },
            Node::Unary(f, a) => {
                // @not_strictly_false turns errors into true, so it must see them.
                if *f == UnFn::NotStrictlyFalse {
                    return Ok(Val::Bool(!matches!(a.eval(cx, v), Ok(Val::Bool(false)))));
                }
                unary(*f, a.eval(cx, v)?)
            }
            Node::List(items) => {
                let values = items
                    .iter()
                    .map(|n| n.eval(cx, v))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Val::List(Rc::new(values)))
            }
            Node::Map(entries) => {
                let mut values = Vec::with_capacity(entries.len());
                for (k, val) in entries {
                    values.push((k.eval(cx, v)?, val.eval(cx, v)?));
                }
                Ok(Val::Map(Rc::new(values)))
            }
            Node::Comprehension(c) => c.eval(cx, v),
        }
    }
}

fn eval_path<'a>(root: Root, steps: &'a [Box<str>], v: &Vars<'a>) -> Result<Val<'a>, EvalError> {
    // JSON roots walk the borrowed document directly: the common case for `context.*` and
    // `action.payload.*`, and allocation-free.
    let json = match root {
        Root::ActionPayload => Some(&v.action.payload),
        Root::ActionContext | Root::Context => Some(&v.action.context),
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

fn binary<'a>(op: BinOp, x: Val<'a>, y: Val<'a>) -> Result<Val<'a>, EvalError> {
    let overflow = || EvalError("integer overflow".into());
    Ok(match op {
        BinOp::Eq => Val::Bool(equal(&x, &y)),
        BinOp::Ne => Val::Bool(!equal(&x, &y)),
        BinOp::Lt => Val::Bool(compare(&x, &y)? == Ordering::Less),
        BinOp::Le => Val::Bool(compare(&x, &y)? != Ordering::Greater),
        BinOp::Gt => Val::Bool(compare(&x, &y)? == Ordering::Greater),
        BinOp::Ge => Val::Bool(compare(&x, &y)? != Ordering::Less),
        BinOp::In => {
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
        BinOp::Add => match (&x, &y) {
            (Val::Int(a), Val::Int(b)) => Val::Int(a.checked_add(*b).ok_or_else(overflow)?),
            (Val::UInt(a), Val::UInt(b)) => Val::UInt(a.checked_add(*b).ok_or_else(overflow)?),
            (Val::Str(a), Val::Str(b)) => Val::Str(Cow::Owned(format!("{a}{b}"))),
            _ if x.list_len().is_some() && y.list_len().is_some() => {
                let mut items = Vec::new();
                for list in [&x, &y] {
                    for i in 0..list.list_len().unwrap_or(0) {
                        items.extend(list.list_get(i));
                    }
                }
                Val::List(Rc::new(items))
            }
            _ => arith(&x, &y, "+", |a, b| a + b)?,
        },
        BinOp::Sub => match (&x, &y) {
            (Val::Int(a), Val::Int(b)) => Val::Int(a.checked_sub(*b).ok_or_else(overflow)?),
            (Val::UInt(a), Val::UInt(b)) => Val::UInt(a.checked_sub(*b).ok_or_else(overflow)?),
            _ => arith(&x, &y, "-", |a, b| a - b)?,
        },
        BinOp::Mul => match (&x, &y) {
            (Val::Int(a), Val::Int(b)) => Val::Int(a.checked_mul(*b).ok_or_else(overflow)?),
            (Val::UInt(a), Val::UInt(b)) => Val::UInt(a.checked_mul(*b).ok_or_else(overflow)?),
            _ => arith(&x, &y, "*", |a, b| a * b)?,
        },
        BinOp::Div => match (&x, &y) {
            (Val::Int(_) | Val::UInt(_), Val::Int(0) | Val::UInt(0)) => {
                return fail("division by zero");
            }
            (Val::Int(a), Val::Int(b)) => Val::Int(a.checked_div(*b).ok_or_else(overflow)?),
            (Val::UInt(a), Val::UInt(b)) => Val::UInt(a / b),
            _ => arith(&x, &y, "/", |a, b| a / b)?,
        },
        BinOp::Rem => match (&x, &y) {
            (Val::Int(_) | Val::UInt(_), Val::Int(0) | Val::UInt(0)) => {
                return fail("modulus by zero");
            }
            (Val::Int(a), Val::Int(b)) => Val::Int(a.checked_rem(*b).ok_or_else(overflow)?),
            (Val::UInt(a), Val::UInt(b)) => Val::UInt(a % b),
            _ => {
                return fail(format!(
                    "cannot apply `%` to {} and {}",
                    x.type_name(),
                    y.type_name()
                ));
            }
        },
    })
}

fn arith<'a>(
    x: &Val<'_>,
    y: &Val<'_>,
    sym: &str,
    f: fn(f64, f64) -> f64,
) -> Result<Val<'a>, EvalError> {
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => {
            let r = f(a, b);
            if r.is_finite() {
                Ok(Val::Double(r))
            } else {
                fail(format!("`{sym}` produced a non-finite number"))
            }
        }
        _ => fail(format!(
            "cannot apply `{sym}` to {} and {}",
            x.type_name(),
            y.type_name()
        )),
    }
}

fn unary(f: UnFn, x: Val<'_>) -> Result<Val<'_>, EvalError> {
    Ok(match f {
        UnFn::Size => match &x {
            Val::Str(s) => Val::Int(s.chars().count() as i64),
            _ => match x.list_len().or_else(|| x.map_len()) {
                Some(n) => Val::Int(n as i64),
                None => return fail(format!("`size` is not defined for {}", x.type_name())),
            },
        },
        UnFn::Int => match &x {
            Val::Int(i) => Val::Int(*i),
            Val::UInt(u) => {
                Val::Int(i64::try_from(*u).map_err(|_| EvalError("integer overflow".into()))?)
            }
            Val::Double(d) if d.is_finite() && d.abs() < 9.2e18 => Val::Int(d.trunc() as i64),
            Val::Str(s) => Val::Int(
                s.trim()
                    .parse()
                    // The detail reaches the server log: name the type, never the value.
                    .map_err(|_| EvalError("a string that is not an int".into()))?,
            ),
            _ => return fail(format!("cannot convert {} to int", x.type_name())),
        },
        UnFn::Double => match (&x, x.as_f64()) {
            (_, Some(d)) => Val::Double(d),
            (Val::Str(s), _) => Val::Double(
                s.trim()
                    .parse()
                    .map_err(|_| EvalError("a string that is not a number".into()))?,
            ),
            _ => return fail(format!("cannot convert {} to double", x.type_name())),
        },
        UnFn::String => {
            let mut out = String::new();
            x.write_text(&mut out);
            Val::Str(Cow::Owned(out))
        }
        UnFn::Lower | UnFn::Upper => match &x {
            Val::Str(s) if f == UnFn::Lower => Val::Str(Cow::Owned(s.to_ascii_lowercase())),
            Val::Str(s) => Val::Str(Cow::Owned(s.to_ascii_uppercase())),
            _ => {
                return fail(format!(
                    "case conversion needs a string, not {}",
                    x.type_name()
                ));
            }
        },
        UnFn::NotStrictlyFalse => Val::Bool(!matches!(x, Val::Bool(false))),
    })
}

impl Comprehension {
    fn eval<'a>(&'a self, cx: &mut Cx<'a>, v: &Vars<'a>) -> Result<Val<'a>, EvalError> {
        let range = self.range.eval(cx, v)?;
        let items: Vec<Val<'a>> = if let Some(n) = range.list_len() {
            (0..n).filter_map(|i| range.list_get(i)).collect()
        } else if range.map_len().is_some() {
            map_entries(&range).into_iter().map(|(k, _)| k).collect()
        } else {
            return fail(format!("cannot iterate over {}", range.type_name()));
        };
        let accu = self.init.eval(cx, v)?;
        if cx.locals.len() < self.accu_slot + 1 {
            cx.locals.resize(self.accu_slot + 1, Val::Null);
        }
        cx.locals[self.accu_slot] = accu;
        for item in items {
            cx.budget_used += 1;
            if cx.budget_used > ITERATION_BUDGET {
                return fail(format!(
                    "condition exceeded its cost limit of {ITERATION_BUDGET} iterations"
                ));
            }
            cx.locals[self.iter_slot] = item;
            match self.cond.eval(cx, v)? {
                Val::Bool(true) => {}
                Val::Bool(false) => break,
                other => return fail(format!("loop condition evaluated to {}", other.type_name())),
            }
            let next = self.step.eval(cx, v)?;
            cx.locals[self.accu_slot] = next;
        }
        let result = self.result.eval(cx, v);
        cx.locals.truncate(self.iter_slot);
        result
    }
}

#[cfg(test)]
mod tests {
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
        let env = Env {
            tenant: "acme".into(),
            now: 1_700_000_000,
        };
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
            ("now > 1600000000", true),
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
}
