//! Compiling the `cel` crate's AST into our tree: names resolved against the action schema,
//! functions resolved against the library, everything knowable refused here rather than at
//! evaluation time.

use super::ExprError;
use super::node::{BinOp, Comprehension, Func, Lit, Node, Root};
use super::schema::{ActionField, Shape};
use super::time::{self, TimePart};
use super::value::CelType;
use cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr as Ast, IdedExpr, LiteralValue,
};
use serde_json::Value;

const ROOTS: &str = "`action`, `context`, `agent`, `tenant` or `now`";

#[derive(Default)]
pub(super) struct Compiler {
    /// Comprehension variables in scope, innermost last; the index is the slot.
    scope: Vec<String>,
}

impl Root {
    /// The typed field below this one, if the path continues into a known record.
    fn field(self, name: &str) -> Result<Option<Root>, ExprError> {
        let unknown = |what: &str, fields: String| {
            Err(ExprError::new(format!(
                "`{what}` has no field `{name}`; it has {fields}"
            )))
        };
        match self {
            Root::Action => match ActionField::child(None, name) {
                Some(f) => Ok(Some(Root::Field(f))),
                None => unknown("action", ActionField::listing(None)),
            },
            Root::Field(f) => match f.shape() {
                Shape::Record => match ActionField::child(Some(f), name) {
                    Some(child) => Ok(Some(Root::Field(child))),
                    None => unknown(f.path(), ActionField::listing(Some(f))),
                },
                Shape::Json => Ok(None),
                Shape::Text | Shape::Double | Shape::Int => Err(ExprError::new(format!(
                    "`{}` is a single value and has no field `{name}`",
                    f.path()
                ))),
            },
            Root::Agent => match name {
                "id" => Ok(Some(Root::AgentId)),
                "tier" => Ok(Some(Root::AgentTier)),
                _ => unknown("agent", "`id` and `tier`".into()),
            },
            _ => Ok(None),
        }
    }

    fn is_json(self) -> bool {
        matches!(
            self,
            Root::Context | Root::Field(ActionField::Payload | ActionField::Context)
        )
    }
}

/// The dotted name an expression spells, if it is only identifiers and selects
/// (`google.protobuf.Timestamp`).
fn qualified_name(e: &Ast) -> Option<String> {
    match e {
        Ast::Ident(name) => Some(name.clone()),
        Ast::Select(s) if !s.test => {
            qualified_name(&s.operand.expr).map(|base| format!("{base}.{}", s.field))
        }
        _ => None,
    }
}

impl Compiler {
    pub(super) fn compile(&mut self, e: &IdedExpr) -> Result<Node, ExprError> {
        match &e.expr {
            Ast::Literal(lit) => Ok(Node::Lit(literal(lit)?)),
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
                if let Some(name) = qualified_name(&e.expr)
                    && !self.in_scope(name.split('.').next().unwrap_or_default())
                    && let Some(t) = CelType::from_name(&name)
                {
                    return Ok(Node::Lit(Lit::Type(t)));
                }
                let operand = self.compile(&select.operand)?;
                Ok(match operand {
                    Node::Path(root, steps) if root.is_json() => {
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
                // Lists of strings, bools and nulls become one constant; numbers stay nodes so
                // they keep CEL's strict arithmetic (a folded number would act like input JSON).
                let foldable = |n: &Node| {
                    matches!(
                        n,
                        Node::Lit(Lit::Null | Lit::Bool(_) | Lit::Str(_)) | Node::Json(_)
                    )
                };
                if items.iter().all(foldable) {
                    let values = items
                        .into_iter()
                        .filter_map(|n| match n {
                            Node::Lit(Lit::Null) => Some(Value::Null),
                            Node::Lit(Lit::Bool(b)) => Some(Value::Bool(b)),
                            Node::Lit(Lit::Str(s)) => Some(Value::String(s.into())),
                            Node::Json(v) => Some(*v),
                            _ => None,
                        })
                        .collect();
                    return Ok(Node::Json(Box::new(Value::Array(values))));
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

    fn in_scope(&self, name: &str) -> bool {
        self.scope.iter().any(|n| n == name)
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
                if let Some(t) = CelType::from_name(name) {
                    return Ok(Node::Lit(Lit::Type(t)));
                }
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
        match e {
            Ast::Ident(name) if name == "action" && !self.in_scope(name) => Ok(Some(Root::Action)),
            Ast::Ident(name) if name == "agent" && !self.in_scope(name) => Ok(Some(Root::Agent)),
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
            if matches!(&target.expr, Ast::Ident(ns) if ns == "sets" && !self.in_scope(ns)) {
                let f = match (name, args.len()) {
                    ("contains", 2) => Func::SetsContains,
                    ("intersects", 2) => Func::SetsIntersects,
                    ("equivalent", 2) => Func::SetsEquivalent,
                    _ => {
                        return Err(ExprError::new(format!(
                            "unknown function `sets.{name}` with {} arguments",
                            args.len()
                        )));
                    }
                };
                return self.call_node(f, None, args);
            }
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
        let func = match name {
            op::LOGICAL_AND => return self.pair(name, args).map(|(a, b)| Node::And(a, b)),
            op::LOGICAL_OR => return self.pair(name, args).map(|(a, b)| Node::Or(a, b)),
            op::INDEX => return self.pair(name, args).map(|(a, b)| Node::Index(a, b)),
            op::LOGICAL_NOT => return Ok(Node::Not(Box::new(self.single(name, args)?))),
            op::NEGATE => return self.negate(args),
            op::NOT_STRICTLY_FALSE => {
                return Ok(Node::NotStrictlyFalse(Box::new(self.single(name, args)?)));
            }
            op::CONDITIONAL => {
                return match args.as_slice() {
                    [c, t, f] => Ok(Node::Cond(
                        Box::new(self.compile(c)?),
                        Box::new(self.compile(t)?),
                        Box::new(self.compile(f)?),
                    )),
                    _ => Err(ExprError::new("the conditional takes three operands")),
                };
            }
            // `dyn` only tells a type checker to look away; we have none.
            "dyn" => return self.single(name, args),
            "matches" => {
                return match args.as_slice() {
                    [s, re] => {
                        let recv = self.compile(s)?;
                        self.method("matches", recv, std::slice::from_ref(re))
                    }
                    _ => Err(ExprError::new("`matches` takes two arguments")),
                };
            }
            "size" => Func::Size,
            "int" => Func::Int,
            "uint" => Func::UInt,
            "double" => Func::Double,
            "string" => Func::String,
            "bool" => Func::Bool,
            "bytes" => Func::Bytes,
            "timestamp" => Func::Timestamp,
            "duration" => Func::Duration,
            "type" => Func::Type,
            "glob" => Func::Glob,
            _ => return Err(ExprError::new(format!("unknown function `{name}`"))),
        };
        let arity = if func == Func::Glob { 2 } else { 1 };
        if args.len() != arity {
            return Err(ExprError::new(format!(
                "`{name}` takes {arity} argument{}",
                if arity == 1 { "" } else { "s" }
            )));
        }
        // Conversions of literals are checked (and folded) now, so a typo is a check error.
        if let ([arg], Func::Timestamp | Func::Duration) = (args.as_slice(), func)
            && let Ast::Literal(LiteralValue::String(text)) = &arg.expr
        {
            let text: &str = text.inner();
            return if func == Func::Timestamp {
                time::parse_timestamp(text)
                    .map(|t| Node::Lit(Lit::Timestamp(t)))
                    .map_err(|_| ExprError::new(format!("`{text}` is not an RFC 3339 timestamp")))
            } else {
                time::parse_duration(text)
                    .map(|d| Node::Lit(Lit::Duration(d)))
                    .map_err(|_| {
                        ExprError::new(format!("`{text}` is not a duration like `90m` or `1.5s`"))
                    })
            };
        }
        self.call_node(func, None, args)
    }

    fn negate(&mut self, args: &[IdedExpr]) -> Result<Node, ExprError> {
        let operand = self.single("-", args)?;
        // Folded, so `-9223372036854775807` costs nothing at run time.
        Ok(match operand {
            Node::Lit(Lit::Int(i)) => Node::Lit(Lit::Int(
                i.checked_neg()
                    .ok_or_else(|| ExprError::new("integer literal out of range"))?,
            )),
            Node::Lit(Lit::Double(d)) => Node::Lit(Lit::Double(-d)),
            other => Node::Neg(Box::new(other)),
        })
    }

    fn call_node(
        &mut self,
        f: Func,
        recv: Option<Node>,
        args: &[IdedExpr],
    ) -> Result<Node, ExprError> {
        let mut nodes: Vec<Node> = recv.into_iter().collect();
        for a in args {
            nodes.push(self.compile(a)?);
        }
        Ok(Node::Call(f, nodes.into_boxed_slice()))
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
        if name == "matches" {
            return match args {
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
                    Ok(Node::Matches(Box::new(recv), Box::new(re)))
                }
                _ => Err(ExprError::new("`matches` needs a string literal pattern")),
            };
        }
        if let Some(part) = TimePart::from_method(name) {
            return match args {
                [] => Ok(Node::TimePart(part, Box::new(recv), None)),
                [
                    IdedExpr {
                        expr: Ast::Literal(LiteralValue::String(zone)),
                        ..
                    },
                ] => {
                    let tz = time::zone(zone.inner()).map_err(ExprError::new)?;
                    Ok(Node::TimePart(part, Box::new(recv), Some(Box::new(tz))))
                }
                [_] => self.call_node(Func::Time(part), Some(recv), args),
                _ => Err(ExprError::new(format!(
                    "`{name}` takes at most one argument (a time zone)"
                ))),
            };
        }
        let (func, arities): (Func, &[usize]) = match name {
            "size" => (Func::Size, &[0]),
            "startsWith" => (Func::StartsWith, &[1]),
            "endsWith" => (Func::EndsWith, &[1]),
            "contains" => (Func::Contains, &[1]),
            "lowerAscii" => (Func::LowerAscii, &[0]),
            "upperAscii" => (Func::UpperAscii, &[0]),
            "trim" => (Func::Trim, &[0]),
            "split" => (Func::Split, &[1, 2]),
            "join" => (Func::Join, &[0, 1]),
            "replace" => (Func::Replace, &[2, 3]),
            "indexOf" => (Func::IndexOf, &[1, 2]),
            "lastIndexOf" => (Func::LastIndexOf, &[1, 2]),
            "substring" => (Func::Substring, &[1, 2]),
            "charAt" => (Func::CharAt, &[1]),
            "reverse" => (Func::Reverse, &[0]),
            _ => return Err(ExprError::new(format!("unknown method `{name}`"))),
        };
        if !arities.contains(&args.len()) {
            return Err(ExprError::new(format!(
                "`{name}` does not take {} arguments",
                args.len()
            )));
        }
        self.call_node(func, Some(recv), args)
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
        let accu_slot = base + 1;
        Ok(Node::Comprehension(Box::new(Comprehension {
            range,
            iter_slot: base,
            accu_slot,
            init,
            cond,
            step: in_place(step, accu_slot),
            result,
        })))
    }
}

/// Rewrites `accu + [x]` (the step of `map` and `filter`) into an in-place append, so the
/// result is built in linear time instead of copying the list on every step.
fn in_place(step: Node, accu: usize) -> Node {
    match step {
        Node::Binary(BinOp::Add, a, b) if matches!(*a, Node::Local(s) if s == accu) => match *b {
            Node::List(items) => Node::Append(accu, items),
            Node::Json(json) if json.is_array() => Node::Append(
                accu,
                json.as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Node::Lit(Lit::Str(s.into())),
                        Value::Bool(b) => Node::Lit(Lit::Bool(b)),
                        Value::Null => Node::Lit(Lit::Null),
                        other => Node::Json(Box::new(other)),
                    })
                    .collect(),
            ),
            other => Node::Binary(BinOp::Add, a, Box::new(other)),
        },
        Node::Cond(c, t, f) => Node::Cond(
            c,
            Box::new(in_place(*t, accu)),
            Box::new(in_place(*f, accu)),
        ),
        other => other,
    }
}

fn literal(lit: &LiteralValue) -> Result<Lit, ExprError> {
    Ok(match lit {
        LiteralValue::Boolean(b) => Lit::Bool(**b),
        LiteralValue::Int(i) => Lit::Int(**i),
        LiteralValue::UInt(u) => Lit::UInt(**u),
        LiteralValue::Double(d) => Lit::Double(**d),
        LiteralValue::String(s) => Lit::Str(s.inner().into()),
        LiteralValue::Null => Lit::Null,
        LiteralValue::Bytes(b) => Lit::Bytes(b.inner().into()),
    })
}
