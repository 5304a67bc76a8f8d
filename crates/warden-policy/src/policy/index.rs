//! The action-name index: which rules can match an action type, found without looking at
//! the others. Exact names hit a precomputed candidate list, prefix globs a byte trie, other
//! globs a short list.

use super::Rule;
use crate::glob::{Glob, GlobKind};
use std::borrow::Cow;
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    /// Full candidate lists for every action name a rule spells literally.
    exact: HashMap<String, Box<[u32]>>,
    trie: Trie,
    general: Vec<(Glob, u32)>,
}

impl Index {
    pub(super) fn build(rules: &[Rule]) -> Self {
        let mut literal: HashMap<String, Vec<u32>> = HashMap::new();
        let mut index = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            for glob in &rule.actions {
                match glob.kind() {
                    GlobKind::Exact => literal.entry(glob.as_str().to_owned()).or_default().push(i),
                    GlobKind::Prefix(prefix) => index.trie.insert(prefix, i),
                    GlobKind::General(_) => index.general.push((glob.clone(), i)),
                }
            }
        }
        for (name, mut ids) in literal {
            ids.extend(index.patterned(&name));
            ids.sort_unstable();
            ids.dedup();
            index.exact.insert(name, ids.into_boxed_slice());
        }
        index
    }

    fn patterned(&self, name: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.trie.collect(name, &mut ids);
        ids.extend(
            self.general
                .iter()
                .filter(|(g, _)| g.matches(name))
                .map(|(_, i)| *i),
        );
        ids
    }

    /// Indices of the rules whose action patterns match `name`, in policy order.
    pub(super) fn candidates(&self, name: &str) -> Cow<'_, [u32]> {
        if let Some(ids) = self.exact.get(name) {
            return Cow::Borrowed(ids);
        }
        let mut ids = self.patterned(name);
        ids.sort_unstable();
        ids.dedup();
        Cow::Owned(ids)
    }
}

/// A byte trie of prefix patterns; walking a name visits every prefix that matches it.
#[derive(Debug, Clone)]
struct Trie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    rules: Vec<u32>,
}

impl Default for Trie {
    fn default() -> Self {
        Self {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl Trie {
    fn insert(&mut self, prefix: &str, rule: u32) {
        let mut at = 0usize;
        for b in prefix.bytes() {
            at = match self.nodes[at].children.iter().find(|(c, _)| *c == b) {
                Some((_, next)) => *next as usize,
                None => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.push((b, next as u32));
                    next
                }
            };
        }
        self.nodes[at].rules.push(rule);
    }

    fn collect(&self, name: &str, out: &mut Vec<u32>) {
        let mut at = 0usize;
        out.extend_from_slice(&self.nodes[at].rules);
        for b in name.bytes() {
            match self.nodes[at].children.iter().find(|(c, _)| *c == b) {
                Some((_, next)) => {
                    at = *next as usize;
                    out.extend_from_slice(&self.nodes[at].rules);
                }
                None => return,
            }
        }
    }
}
