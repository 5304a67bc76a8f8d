//! The built-in tier presets. Each is written as an ordinary rule document and compiled by
//! the same validator as a user's rules, so a preset cannot do anything a rule cannot, and
//! a broken one is caught by `every_preset_compiles` rather than surfacing to a user.
//! Tiers cap what an agent may do; they never grant.

use super::compile::Checker;
use super::model::{Rule, Tier};
use crate::document::{self, PolicyError, RawRule};
use crate::glob::Glob;
use serde_json::{Value, json};

const READ_ONLY: &str = "!(action.type.endsWith('.read') || action.type.endsWith('.get') \
                         || action.type.endsWith('.list') || action.type.endsWith('.search'))";

/// The preset rule for a tier as a JSON document (which YAML reads), or `None` when the
/// tier has no preset (`sandbox` and `prod_gated` without `production` patterns).
pub(super) fn document(tier: Tier, production: &[Glob]) -> Option<Value> {
    let production: Vec<&str> = production.iter().map(Glob::as_str).collect();
    let (id, actions, when, effect, reason) = match tier {
        Tier::Observe => (
            "tier-observe",
            vec!["*"],
            Some(READ_ONLY),
            "deny",
            "agent {{agent.id}} is at tier observe and may only run read actions (*.read, *.get, *.list, *.search)",
        ),
        Tier::Recommend => (
            "tier-recommend",
            vec!["*"],
            Some(READ_ONLY),
            "deny",
            "agent {{agent.id}} is at tier recommend: it may read and recommend, not execute",
        ),
        Tier::Draft => (
            "tier-draft",
            vec!["*"],
            Some(READ_ONLY),
            "modify",
            "agent {{agent.id}} is at tier draft, so this write must run in mode draft",
        ),
        Tier::Sandbox if !production.is_empty() => (
            "tier-sandbox",
            production,
            None,
            "deny",
            "agent {{agent.id}} is at tier sandbox and may not run production actions",
        ),
        Tier::ProdGated if !production.is_empty() => (
            "tier-prod-gated",
            production,
            None,
            "require_approval",
            "agent {{agent.id}} is at tier prod_gated: production actions need approval",
        ),
        Tier::Sandbox | Tier::ProdGated => return None,
    };
    let mut rule = json!({
        "id": id,
        "description": format!("built-in preset for tier `{}`", tier.as_str()),
        "actions": actions,
        "effect": effect,
        "reason": reason,
    });
    if let Some(when) = when {
        rule["when"] = json!(when);
    }
    if tier == Tier::Draft {
        rule["set"] = json!({"mode": "draft"});
    }
    Some(rule)
}

impl Checker {
    /// The compiled preset rules for a tier.
    pub(super) fn preset(&mut self, tier: Tier, production: &[Glob]) -> Vec<Rule> {
        let Some(doc) = document(tier, production) else {
            return Vec::new();
        };
        let before = self.errors.len();
        let source = doc.to_string();
        let rule = match document::load(&source) {
            Ok(node) => match document::from_node::<RawRule>(&node) {
                Ok(raw) => self.rule(&raw, Some(tier)),
                Err(errors) => {
                    self.errors.extend(errors.0);
                    None
                }
            },
            Err(errors) => {
                self.errors.extend(errors.0);
                None
            }
        };
        // Positions inside the generated document mean nothing to the policy's author.
        for e in &mut self.errors[before..] {
            *e = PolicyError::nowhere(format!(
                "the built-in preset for tier `{}` is invalid: {}",
                tier.as_str(),
                e.message
            ));
        }
        rule.into_iter().collect()
    }
}
