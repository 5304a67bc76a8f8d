//! Policy test suites: `*_test.yaml` files of actions and the decisions they must get.
//!
//! ```yaml
//! policy: nexus.yaml
//! cases:
//!   - name: low confidence resolve is denied
//!     action: {type: ticket.resolve, confidence: 0.7, agent: support-bot}
//!     expect: {effect: deny, rules: [low-confidence-resolve]}
//! ```
//!
//! `expect` may hold `effect` (required), `rules` (the deciding rules, as a set), `matched`
//! (every matching rule, as a set), `reasons` (the deciding reasons' messages, in order),
//! `code` (the first reason's code), `confidence` (the adjusted value) and `obligations`.
//! A case may also set `tenant` and `now` (Unix seconds, or an RFC 3339 time such as
//! `2026-03-06T16:30:00Z`).

use crate::action::{Action, Env, Timestamp};
use crate::decision::{Decision, Verdict};
use crate::document::{self, PolicyError, PolicyErrors};
use crate::policy::Policy;
use marked_yaml::Node;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// A parsed test suite.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The policy file, relative to the suite file.
    pub policy: String,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// One test case.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case checks.
    pub name: String,
    /// Line of the case in the suite file.
    pub line: usize,
    /// The action to evaluate.
    pub action: Action,
    /// Tenant and time.
    pub env: Env,
    /// What the decision must be.
    pub expect: Expect,
}

/// The expected decision; absent fields are not checked.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The verdict.
    pub effect: ExpectedVerdict,
    /// The deciding rules, compared as a set.
    pub rules: Option<BTreeSet<String>>,
    /// Every matching rule, compared as a set.
    pub matched: Option<BTreeSet<String>>,
    /// The deciding reasons' messages, in order.
    pub reasons: Option<Vec<String>>,
    /// The first reason's code, e.g. `evaluation_error`.
    pub code: Option<String>,
    /// The adjusted confidence.
    pub confidence: Option<f64>,
    /// The obligations: `mode` and `limits`.
    pub obligations: Option<ExpectedObligations>,
}

/// A verdict as written in a test file.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVerdict {
    /// allow
    Allow,
    /// deny
    #[default]
    Deny,
    /// require_approval
    RequireApproval,
}

impl From<ExpectedVerdict> for Verdict {
    fn from(v: ExpectedVerdict) -> Self {
        match v {
            ExpectedVerdict::Allow => Verdict::Allow,
            ExpectedVerdict::Deny => Verdict::Deny,
            ExpectedVerdict::RequireApproval => Verdict::RequireApproval,
        }
    }
}

/// Obligations as written in a test file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExpectedObligations {
    /// The mode.
    pub mode: Option<String>,
    /// The limits.
    #[serde(default)]
    pub limits: BTreeMap<String, f64>,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// The case's line.
    pub line: usize,
    /// Each way the decision differs from the expectation; empty when the case passed.
    pub failures: Vec<String>,
    /// The decision the policy gave.
    pub decision: Decision,
}

impl CaseResult {
    /// Whether the decision met every expectation.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn line_of(node: &Node) -> (usize, usize) {
    node.span()
        .start()
        .map_or((0, 0), |m| (m.line(), m.column()))
}

fn error_at(node: &Node, message: impl Into<String>) -> PolicyError {
    let (line, column) = line_of(node);
    PolicyError {
        line,
        column,
        message: message.into(),
    }
}

impl Suite {
    /// Parses a suite; every malformed case is reported with its position.
    pub fn parse(source: &str) -> Result<Self, PolicyErrors> {
        let root = document::load(source)?;
        let Some(top) = root.as_mapping() else {
            return Err(PolicyErrors(vec![error_at(
                &root,
                "a test file is a mapping with `policy` and `cases`",
            )]));
        };
        let mut errors = Vec::new();
        for (key, _) in top.iter() {
            if !matches!(key.as_str(), "policy" | "cases") {
                errors.push(PolicyError::at(
                    key.span(),
                    format!(
                        "unknown field `{}`, expected `policy` or `cases`",
                        key.as_str()
                    ),
                ));
            }
        }
        let policy = match top.get_scalar("policy") {
            Some(p) => p.as_str().to_owned(),
            None => {
                errors.push(error_at(
                    &root,
                    "missing field `policy` (the policy file to test)",
                ));
                String::new()
            }
        };
        let mut cases = Vec::new();
        match top.get_sequence("cases") {
            Some(list) => {
                for node in list.iter() {
                    match Self::case(node) {
                        Ok(case) => cases.push(case),
                        Err(e) => errors.push(e),
                    }
                }
            }
            None => errors.push(error_at(&root, "missing field `cases` (a list of cases)")),
        }
        if errors.is_empty() {
            Ok(Self { policy, cases })
        } else {
            Err(PolicyErrors(errors))
        }
    }

    fn case(node: &Node) -> Result<Case, PolicyError> {
        let Some(map) = node.as_mapping() else {
            return Err(error_at(
                node,
                "a case is a mapping with `name`, `action` and `expect`",
            ));
        };
        for (key, _) in map.iter() {
            if !matches!(
                key.as_str(),
                "name" | "action" | "expect" | "tenant" | "now"
            ) {
                return Err(PolicyError::at(
                    key.span(),
                    format!(
                        "unknown field `{}`, expected one of `name`, `action`, `expect`, `tenant`, `now`",
                        key.as_str()
                    ),
                ));
            }
        }
        let name = map
            .get_scalar("name")
            .map(|s| s.as_str().to_owned())
            .ok_or_else(|| error_at(node, "case is missing `name`"))?;
        let action_node = map
            .get_node("action")
            .ok_or_else(|| error_at(node, format!("case `{name}` is missing `action`")))?;
        let action = Action::from_value(document::node_to_json(action_node))
            .map_err(|e| error_at(action_node, format!("case `{name}`: {e}")))?;
        let expect_node = map
            .get_node("expect")
            .ok_or_else(|| error_at(node, format!("case `{name}` is missing `expect`")))?;
        let expect: Expect = serde_json::from_value(document::node_to_json(expect_node))
            .map_err(|e| error_at(expect_node, format!("case `{name}`: invalid `expect`: {e}")))?;
        if expect_node
            .as_mapping()
            .is_some_and(|m| m.get_node("effect").is_none())
        {
            return Err(error_at(
                expect_node,
                format!("case `{name}`: `expect` needs `effect`"),
            ));
        }
        let mut env = Env::default();
        if let Some(t) = map.get_scalar("tenant") {
            env.tenant = t.as_str().to_owned();
        }
        if let Some(n) = map.get_scalar("now") {
            let text = n.as_str();
            let now = match text.parse::<i64>() {
                Ok(seconds) => Timestamp::from_unix_seconds(seconds),
                Err(_) => Timestamp::parse_rfc3339(text),
            };
            env.now = now.ok_or_else(|| {
                PolicyError::at(
                    n.span(),
                    format!(
                        "case `{name}`: `now` must be Unix seconds or an RFC 3339 time, not `{text}`"
                    ),
                )
            })?;
        }
        Ok(Case {
            name,
            line: line_of(node).0,
            action,
            env,
            expect,
        })
    }

    /// Runs every case against a policy.
    pub fn run(&self, policy: &Policy) -> Vec<CaseResult> {
        self.cases.iter().map(|case| case.run(policy)).collect()
    }
}

impl Case {
    /// Evaluates the case and compares the decision with the expectation.
    pub fn run(&self, policy: &Policy) -> CaseResult {
        let decision = policy.evaluate(&self.action, &self.env);
        let mut failures = Vec::new();
        let e = &self.expect;
        let expected = Verdict::from(e.effect);
        if decision.verdict != expected {
            failures.push(format!(
                "effect: expected {expected}, got {}",
                decision.verdict
            ));
        }
        let ids = |it: &mut dyn Iterator<Item = &crate::policy::RuleId>| -> BTreeSet<String> {
            it.map(|r| r.as_str().to_owned()).collect()
        };
        if let Some(rules) = &e.rules {
            let got = ids(&mut decision.deciding_rules());
            if &got != rules {
                failures.push(format!("rules: {}", difference(rules, &got)));
            }
        }
        if let Some(matched) = &e.matched {
            let got = ids(&mut decision.matched_rules());
            if &got != matched {
                failures.push(format!("matched: {}", difference(matched, &got)));
            }
        }
        if let Some(reasons) = &e.reasons {
            let verdict = crate::policy::Effect::from(decision.verdict);
            let got: Vec<String> = decision
                .reasons
                .iter()
                .filter(|r| r.effect == verdict)
                .map(|r| r.message.clone())
                .collect();
            if &got != reasons {
                failures.push(format!("reasons: expected {reasons:?}, got {got:?}"));
            }
        }
        if let Some(code) = &e.code {
            let got = decision.reasons.first().map_or("none", |r| r.code.as_str());
            if got != code {
                failures.push(format!("code: expected {code}, got {got}"));
            }
        }
        if let Some(confidence) = e.confidence {
            match decision.confidence {
                Some(c) if (c.adjusted - confidence).abs() < 1e-9 => {}
                Some(c) => failures.push(format!(
                    "confidence: expected {confidence}, got {}",
                    c.adjusted
                )),
                None => failures.push(format!(
                    "confidence: expected {confidence}, but the action has none"
                )),
            }
        }
        if let Some(o) = &e.obligations {
            let got = &decision.obligations;
            if o.mode != got.mode || o.limits != got.limits {
                failures.push(format!(
                    "obligations: expected mode {:?} limits {:?}, got mode {:?} limits {:?}",
                    o.mode, o.limits, got.mode, got.limits
                ));
            }
        }
        CaseResult {
            name: self.name.clone(),
            line: self.line,
            failures,
            decision,
        }
    }
}

/// "expected [a, b], got [b, c] (missing a; unexpected c)": long sets stay readable.
fn difference(expected: &BTreeSet<String>, got: &BTreeSet<String>) -> String {
    let missing: BTreeSet<String> = expected.difference(got).cloned().collect();
    let unexpected: BTreeSet<String> = got.difference(expected).cloned().collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", list(&missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected {}", list(&unexpected)));
    }
    format!(
        "expected {}, got {} ({})",
        list(expected),
        list(got),
        parts.join("; ")
    )
}

fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        return "[]".into();
    }
    format!("[{}]", set.iter().cloned().collect::<Vec<_>>().join(", "))
}
