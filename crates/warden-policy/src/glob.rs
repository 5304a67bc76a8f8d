//! Name patterns for action types and agent ids: literal text where `*` matches any run of
//! characters (including none and including dots).
//!
//! Patterns are classified once so the evaluator can index them: an exact name goes in a hash
//! map, a pattern whose only `*` is the last character goes in a prefix trie, and anything else
//! (`*.read`, `a*b`) is matched directly.

use std::fmt;

/// A compiled name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    kind: GlobKind,
}

/// How a pattern can be indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobKind {
    /// No `*` at all: matches exactly this name.
    Exact,
    /// One trailing `*`: matches every name starting with the prefix (empty prefix = `*`).
    Prefix(String),
    /// `*` elsewhere: matched by walking its literal parts.
    General(Vec<String>),
}

impl Glob {
    /// Compiles a pattern; every string is a valid pattern.
    pub fn new(pattern: &str) -> Self {
        let stars = pattern.matches('*').count();
        let kind = if stars == 0 {
            GlobKind::Exact
        } else if stars == 1 && pattern.ends_with('*') {
            GlobKind::Prefix(pattern[..pattern.len() - 1].to_owned())
        } else {
            GlobKind::General(pattern.split('*').map(str::to_owned).collect())
        };
        Self {
            source: pattern.to_owned(),
            kind,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// How the pattern can be indexed.
    pub fn kind(&self) -> &GlobKind {
        &self.kind
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        match &self.kind {
            GlobKind::Exact => self.source == name,
            GlobKind::Prefix(prefix) => name.starts_with(prefix.as_str()),
            GlobKind::General(parts) => match_parts(parts, name),
        }
    }

    /// Literal characters in the pattern; more literal text means a more specific pattern.
    pub fn specificity(&self) -> usize {
        self.source.chars().filter(|c| *c != '*').count() + usize::from(self.is_exact()) * 1_000
    }

    /// Whether the pattern has no wildcard.
    pub fn is_exact(&self) -> bool {
        matches!(self.kind, GlobKind::Exact)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// `parts` are the pattern split at `*`: the first must be a prefix, the last a suffix, and the
/// middle ones must appear in order. Greedy leftmost matching is correct for `*`-only globs.
fn match_parts(parts: &[String], name: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return true;
    };
    if !name.starts_with(first.as_str()) {
        return false;
    }
    let mut rest = &name[first.len()..];
    let middle = &parts[1..parts.len() - 1];
    for part in middle {
        match rest.find(part.as_str()) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_a_shell_star() {
        let table = [
            ("ticket.resolve", "ticket.resolve", true),
            ("ticket.resolve", "ticket.resolved", false),
            ("ticket.*", "ticket.resolve", true),
            ("ticket.*", "ticket.", true),
            ("ticket.*", "tickets.resolve", false),
            ("db.write*", "db.write", true),
            ("db.write*", "db.write_row", true),
            ("*", "", true),
            ("*", "anything.at.all", true),
            ("*.read", "user.profile.read", true),
            ("*.read", "user.reader", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("support-*", "support-bot", true),
            ("support-*", "sales-bot", false),
        ];
        for (pattern, name, expected) in table {
            assert_eq!(
                Glob::new(pattern).matches(name),
                expected,
                "{pattern} vs {name}"
            );
        }
    }

    #[test]
    fn classifies_for_indexing() {
        assert_eq!(Glob::new("a.b").kind(), &GlobKind::Exact);
        assert_eq!(Glob::new("a.*").kind(), &GlobKind::Prefix("a.".into()));
        assert_eq!(Glob::new("*").kind(), &GlobKind::Prefix(String::new()));
        assert!(matches!(Glob::new("*.read").kind(), GlobKind::General(_)));
    }

    #[test]
    fn exact_beats_any_pattern_and_longer_beats_shorter() {
        assert!(Glob::new("bot").specificity() > Glob::new("support-long-*").specificity());
        assert!(Glob::new("support-*").specificity() > Glob::new("s*").specificity());
    }
}
