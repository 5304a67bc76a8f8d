//! CEL conditions and reason templates, compiled to a tree that evaluates directly against
//! the borrowed action.
//!
//! The key design decision: the `cel` crate parses (so the syntax, macros and error
//! positions are real CEL), and we compile its AST against the action schema
//! (`schema.rs`) and evaluate without converting the input into CEL values. That is what
//! keeps a decision under a microsecond: the `cel` interpreter spends more than that
//! converting one action (see docs/BENCHMARKS.md).
//!
//! `compile.rs` resolves names and functions, `node.rs` is the compiled tree, `eval.rs`
//! evaluates it over `value.rs`'s values, `library.rs` holds the functions and `time.rs`
//! timestamps, durations and time zones. Semantics follow CEL (docs/POLICY.md lists the
//! few documented differences).

mod compile;
mod eval;
mod library;
mod node;
pub(crate) mod schema;
pub(crate) mod symbolic;
mod time;
mod value;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod oracle;

#[cfg(test)]
mod tests;

use crate::action::{Action, Env};
use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr};

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
    node: node::Node,
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
        let ast = cel::parser::Parser::new()
            .enable_ident_escape_syntax(true)
            .parse(source)
            .map_err(|errors| {
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
        let node = compile::Compiler::default().compile(&ast)?;
        Ok(Self { node })
    }

    /// Evaluates to a boolean; anything else is an error.
    pub(crate) fn eval_bool(&self, vars: &Vars<'_>) -> Result<bool, EvalError> {
        let mut cx = eval::Cx::default();
        match self.node.eval(&mut cx, vars)? {
            value::Val::Bool(b) => Ok(b),
            other => fail(format!(
                "condition evaluated to {}, not a bool",
                other.type_name()
            )),
        }
    }

    /// Whether the condition holds whenever some part of it that reads only the action's
    /// payload holds: the whole condition, or one side of a top-level `||`. The agent writes
    /// the payload, so such a condition on an allow is a way around the rest of the policy.
    pub(crate) fn payload_escape(&self) -> bool {
        fn escape(node: &node::Node) -> bool {
            if let node::Node::Or(a, b) = node {
                return escape(a) || escape(b);
            }
            let mut reads = Vec::new();
            node.reads(&mut reads);
            !reads.is_empty()
                && reads
                    .iter()
                    .all(|p| p.field == schema::ActionField::Payload)
        }
        escape(&self.node)
    }

    /// Adds every action path the expression reads to `out` (see `Node::reads`).
    pub(crate) fn reads(&self, out: &mut Vec<schema::FieldPath>) {
        self.node.reads(out);
    }

    /// Evaluates and appends the value as text, for reason templates.
    pub(crate) fn render(&self, vars: &Vars<'_>, out: &mut String) -> Result<(), EvalError> {
        let mut cx = eval::Cx::default();
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
