//! The compiled tree: what a condition becomes once every name is resolved.
//!
//! Variable paths are resolved at compile time (`action.confidence` is a typed field read,
//! `context.user.role` a walk over borrowed JSON), literal regular expressions and time
//! zones are built once, and the `map`/`filter` step `accu + [x]` becomes an in-place
//! append, so evaluation does no name lookups and no avoidable copies.

use super::schema::{ActionField, FieldPath, Shape};
use super::time::TimePart;
use super::value::CelType;
use jiff::tz::TimeZone;
use regex::Regex;
use serde_json::Value;

/// A variable path's starting point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Root {
    /// Bare `action`: only ever the start of a path, never a value.
    Action,
    Field(ActionField),
    Context,
    Agent,
    AgentId,
    AgentTier,
    Tenant,
    Now,
}

impl Root {
    pub(super) fn name(self) -> &'static str {
        match self {
            Root::Action => "action",
            Root::Field(f) => f.path(),
            Root::Context => "context",
            Root::Agent => "agent",
            Root::AgentId => "agent.id",
            Root::AgentTier => "agent.tier",
            Root::Tenant => "tenant",
            Root::Now => "now",
        }
    }
}

/// A scalar literal.
#[derive(Debug, Clone)]
pub(super) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Box<str>),
    Bytes(Box<[u8]>),
    Type(CelType),
    Timestamp(jiff::Timestamp),
    Duration(jiff::SignedDuration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BinOp {
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

/// The function library; a method's receiver is its first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Func {
    Size,
    Int,
    UInt,
    Double,
    String,
    Bool,
    Bytes,
    Timestamp,
    Duration,
    Type,
    StartsWith,
    EndsWith,
    Contains,
    LowerAscii,
    UpperAscii,
    Trim,
    Split,
    Join,
    Replace,
    IndexOf,
    LastIndexOf,
    Substring,
    CharAt,
    Reverse,
    SetsContains,
    SetsIntersects,
    SetsEquivalent,
    Glob,
    /// A calendar accessor whose time zone is computed at run time.
    Time(TimePart),
}

#[derive(Debug, Clone)]
pub(super) enum Node {
    Lit(Lit),
    /// A list of literals, folded into one JSON value (boxed: a JSON value is large, and
    /// every node is as large as its largest variant).
    Json(Box<Value>),
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
    Call(Func, Box<[Node]>),
    Matches(Box<Node>, Box<Regex>),
    /// A calendar accessor in UTC or in a zone resolved at compile time.
    TimePart(TimePart, Box<Node>, Option<Box<TimeZone>>),
    /// CEL's `@not_strictly_false`: true unless the operand is `false` (errors are true).
    NotStrictlyFalse(Box<Node>),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// `accu + [items…]` inside a comprehension: appends to the accumulator in place.
    Append(usize, Vec<Node>),
    Comprehension(Box<Comprehension>),
}

#[derive(Debug, Clone)]
pub(super) struct Comprehension {
    pub range: Node,
    pub iter_slot: usize,
    pub accu_slot: usize,
    pub init: Node,
    pub cond: Node,
    pub step: Node,
    pub result: Node,
}

impl Root {
    /// The action path this root (with `steps` into a JSON field) reads, if it reads the
    /// action at all: `agent` and its fields come from `action.agent`, `tenant` and `now`
    /// from the environment.
    fn reads(self, steps: &[Box<str>], out: &mut Vec<FieldPath>) {
        let field = match self {
            Root::Field(f) => f,
            Root::Context => ActionField::Context,
            Root::Agent | Root::AgentId | Root::AgentTier => ActionField::Agent,
            Root::Tenant | Root::Now => return,
            // Never a value (the compiler refuses bare `action`); were it one, it would be
            // all of the action.
            Root::Action => {
                out.extend(ActionField::children(None).map(|field| FieldPath {
                    field,
                    steps: Vec::new(),
                }));
                return;
            }
        };
        // Steps only ever continue a JSON field; anywhere else the whole field is read.
        let steps = if field.shape() == Shape::Json {
            steps.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        };
        out.push(FieldPath { field, steps });
    }
}

impl Node {
    /// Adds every action path the tree reads to `out`, each standing for the whole value
    /// there: `context.user.role` reads that value, `size(context.user)` or
    /// `has(context.user.x)` all of `context.user`, since the operand is evaluated whole.
    /// Every variant is listed, so a new node cannot be forgotten here.
    pub(super) fn reads(&self, out: &mut Vec<FieldPath>) {
        match self {
            Node::Lit(_) | Node::Json(_) | Node::Local(_) => {}
            Node::Path(root, steps) => root.reads(steps, out),
            Node::Present(root) => root.reads(&[], out),
            Node::Select(a, _)
            | Node::Has(a, _)
            | Node::Not(a)
            | Node::Neg(a)
            | Node::Matches(a, _)
            | Node::TimePart(_, a, _)
            | Node::NotStrictlyFalse(a) => a.reads(out),
            Node::Index(a, b) | Node::And(a, b) | Node::Or(a, b) | Node::Binary(_, a, b) => {
                a.reads(out);
                b.reads(out);
            }
            Node::Cond(a, b, c) => {
                a.reads(out);
                b.reads(out);
                c.reads(out);
            }
            Node::Call(_, args) => args.iter().for_each(|n| n.reads(out)),
            Node::List(items) | Node::Append(_, items) => items.iter().for_each(|n| n.reads(out)),
            Node::Map(entries) => entries.iter().for_each(|(k, v)| {
                k.reads(out);
                v.reads(out);
            }),
            Node::Comprehension(c) => {
                for n in [&c.range, &c.init, &c.cond, &c.step, &c.result] {
                    n.reads(out);
                }
            }
        }
    }
}
