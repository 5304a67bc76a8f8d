//! Reason templates: text with `{{ expression }}` holes over the same variables as `when`.

use crate::expr::schema::FieldPath;
use crate::expr::{Expr, ExprError, Vars};

/// A compiled reason template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Hole { source: String, expr: Expr },
}

impl Template {
    pub(crate) fn compile(source: &str) -> Result<Self, ExprError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(ExprError {
                    message: "has a `{{` without a closing `}}`".into(),
                    position: None,
                });
            };
            let hole = after[..close].trim();
            let expr = Expr::compile(hole).map_err(|e| ExprError {
                message: format!("in `{{{{{hole}}}}}`: {}", e.message),
                position: None,
            })?;
            parts.push(Part::Hole {
                source: hole.to_owned(),
                expr,
            });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Adds every action path the template's holes read to `out`.
    pub(crate) fn reads(&self, out: &mut Vec<FieldPath>) {
        for part in &self.parts {
            if let Part::Hole { expr, .. } = part {
                expr.reads(out);
            }
        }
    }

    /// Renders the template. A hole that cannot be evaluated for this action shows its own
    /// source: the decision is already made, and a reason should not hide that a value was
    /// missing.
    pub(crate) fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Hole { source, expr } => {
                    let mark = out.len();
                    if expr.render(vars, &mut out).is_err() {
                        out.truncate(mark);
                        out.push_str("{{");
                        out.push_str(source);
                        out.push_str("}}");
                    }
                }
            }
        }
        out
    }
}
