//! Agents to tiers: exact ids in a hash map, patterns most specific first.

use super::Tier;
use crate::glob::Glob;
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub(super) struct AgentMap {
    pub(super) exact: HashMap<String, Tier>,
    /// The exact ids as patterns, sorted, so they can be listed without building them.
    pub(super) exact_globs: Vec<(Glob, Tier)>,
    /// Patterns, most specific first.
    pub(super) patterns: Vec<(Glob, Tier)>,
}

impl AgentMap {
    pub(super) fn tier_of(&self, agent: &str) -> Option<Tier> {
        if let Some(t) = self.exact.get(agent) {
            return Some(*t);
        }
        self.patterns
            .iter()
            .find(|(g, _)| g.matches(agent))
            .map(|(_, t)| *t)
    }

    pub(super) fn entries(&self) -> Vec<(&Glob, Tier)> {
        let exact = self.exact_globs.iter().map(|(g, t)| (g, *t));
        exact
            .chain(self.patterns.iter().map(|(g, t)| (g, *t)))
            .collect()
    }
}
