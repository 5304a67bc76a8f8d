//! The policy document as written (DESIGN §3): YAML or JSON into spanned raw types, and the
//! positioned errors every later stage reports through.
//!
//! Structural problems (syntax, unknown fields, wrong types) stop parsing at the first one, as
//! serde does; semantic problems are collected so `warden check` shows them all at once.

use marked_yaml::{LoaderOptions, Node, Span, Spanned};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// One problem in a policy or test file, with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    pub(crate) fn at(span: &Span, message: impl Into<String>) -> Self {
        let (line, column) = span.start().map_or((0, 0), |m| (m.line(), m.column()));
        Self {
            line,
            column,
            message: message.into(),
        }
    }

    pub(crate) fn nowhere(message: impl Into<String>) -> Self {
        Self {
            line: 0,
            column: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Every problem found in one document, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl PolicyErrors {
    /// The problems.
    pub fn iter(&self) -> impl Iterator<Item = &PolicyError> {
        self.0.iter()
    }
}

/// Parses YAML (or JSON, which YAML contains) into a node tree, rejecting duplicate keys.
pub(crate) fn load(source: &str) -> Result<Node, PolicyErrors> {
    if source.trim().is_empty() {
        return Err(PolicyErrors(vec![PolicyError::nowhere(
            "the document is empty",
        )]));
    }
    check_nesting(source)?;
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    marked_yaml::parse_yaml_with_options(0, source, options).map_err(|e| {
        use marked_yaml::LoadError as L;
        let (marker, message) = match &e {
            L::TopLevelMustBeMapping(m) => (Some(*m), "the document must be a mapping".to_owned()),
            L::TopLevelMustBeSequence(m) => (Some(*m), "the document must be a list".to_owned()),
            L::UnexpectedAnchor(m) => (
                Some(*m),
                "YAML anchors and aliases are not supported".to_owned(),
            ),
            L::MappingKeyMustBeScalar(m) => {
                (Some(*m), "mapping keys must be plain scalars".to_owned())
            }
            L::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".to_owned()),
            L::ScanError(m, scan) => (Some(*m), format!("invalid YAML: {}", scan.info())),
            L::DuplicateKey(d) => (
                d.key.span().start().copied(),
                format!(
                    "duplicate key `{}` (first at line {})",
                    d.key.as_str(),
                    d.prev_key.span().start().map_or(0, |m| m.line())
                ),
            ),
        };
        let (line, column) = marker.map_or((0, 0), |m| (m.line(), m.column()));
        PolicyErrors(vec![PolicyError {
            line,
            column,
            message,
        }])
    })
}

/// The deepest nesting a document may have. Policies need a handful of levels; the YAML
/// loader recurses per level, so a hostile document could otherwise overflow the stack.
pub(crate) const MAX_NESTING: usize = 64;

/// Refuses documents nested deeper than [`MAX_NESTING`] before the loader sees them. The scan
/// over-approximates depth: every deeper indentation, every compact `- ` marker and
/// every open flow bracket outside quotes and comments is a level.
fn check_nesting(source: &str) -> Result<(), PolicyErrors> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (n, line) in source.lines().enumerate() {
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if flow == 0 {
            let indent = line.len() - trimmed.len();
            while indents.last().is_some_and(|top| *top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            // Compact sequences (`- - x`) nest on one line: each marker opens a level at the
            // column its content starts, which later, deeper lines stay inside.
            let mut rest = trimmed;
            while let Some(after) = rest.strip_prefix("- ") {
                rest = after.trim_start_matches(' ');
                indents.push(line.len() - rest.len());
            }
        }
        let (mut quote, mut escaped) = (None::<char>, false);
        for c in trimmed.chars() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q == '"' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '"' | '\'' => quote = Some(c),
                    '#' => break,
                    '[' | '{' => flow += 1,
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
        }
        if indents.len() + flow > MAX_NESTING {
            return Err(PolicyErrors(vec![PolicyError {
                line: n + 1,
                column: 1,
                message: format!("the document nests deeper than {MAX_NESTING} levels"),
            }]));
        }
    }
    Ok(())
}

/// Deserializes a node into spanned raw types.
pub(crate) fn from_node<'de, T: Deserialize<'de>>(node: &'de Node) -> Result<T, PolicyErrors> {
    marked_yaml::from_node(node).map_err(|e| {
        let (line, column) = e.start_mark().map_or_else(
            || {
                node.span()
                    .start()
                    .map_or((0, 0), |m| (m.line(), m.column()))
            },
            |m| (m.line(), m.column()),
        );
        // The inner error, without the path prefix the wrapper adds: we place the path ourselves.
        let mut message = lowercase_first(&(*e).to_string());
        if let Some(path) = e.path().filter(|p| !p.is_empty() && *p != ".") {
            message = format!("{message} at `{path}`");
        }
        PolicyErrors(vec![PolicyError {
            line,
            column,
            message,
        }])
    })
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The node a JSON value would load as, without writing and scanning its text (the review
/// builds candidates as JSON). Spans are blank, so errors from it carry no position.
pub(crate) fn json_to_node(value: &Value) -> Node {
    use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
    let blank = Span::new_blank;
    let scalar = |text: &str, coerce: bool| {
        let mut node = MarkedScalarNode::new(blank(), text.to_owned());
        node.set_coerce(coerce);
        node
    };
    match value {
        Value::Null => Node::from(scalar("null", true)),
        Value::Bool(b) => Node::from(scalar(if *b { "true" } else { "false" }, true)),
        Value::Number(n) => Node::from(scalar(&n.to_string(), true)),
        Value::String(s) => Node::from(scalar(s, false)),
        Value::Array(items) => Node::from(MarkedSequenceNode::new(
            blank(),
            items.iter().map(json_to_node).collect(),
        )),
        Value::Object(map) => Node::from(
            map.iter()
                .map(|(k, v)| (scalar(k, false), json_to_node(v)))
                .collect::<MarkedMappingNode>(),
        ),
    }
}

/// Converts a node to JSON, typing unquoted scalars the way YAML readers expect
/// (`0.7` is a number, `"0.7"` a string).
pub(crate) fn node_to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) => {
            let text: &str = s.as_str();
            if !s.may_coerce() {
                return Value::String(text.to_owned());
            }
            match text {
                "null" | "~" | "" => Value::Null,
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => {
                    if let Ok(i) = text.parse::<i64>() {
                        Value::from(i)
                    } else if let Some(n) = text
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                    {
                        Value::Number(n)
                    } else {
                        Value::String(text.to_owned())
                    }
                }
            }
        }
        Node::Sequence(items) => Value::Array(items.iter().map(node_to_json).collect()),
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_owned(), node_to_json(v)))
                .collect(),
        ),
    }
}

/// A YAML mapping with spanned keys, in document order (which also breaks ties between
/// equally specific agent patterns).
#[derive(Debug)]
pub(crate) struct Entries<V>(pub Vec<(Spanned<String>, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> Entries<V> {
    pub fn iter(&self) -> impl Iterator<Item = &(Spanned<String>, V)> {
        self.0.iter()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

// ---------------------------------------------------------------------------------------------
// Raw document types: exactly what may be written, with spans where errors need them.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub version: Spanned<String>,
    pub default: Option<Spanned<String>>,
    pub on_error: Option<Spanned<String>>,
    #[serde(default)]
    pub agents: Entries<RawAgent>,
    #[serde(default)]
    pub tiers: Entries<RawTier>,
    #[serde(default)]
    pub production: Vec<Spanned<String>>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub budgets: Vec<RawBudget>,
    #[serde(default)]
    pub rate_limits: Vec<RawRateLimit>,
    pub audit: Option<RawAudit>,
    pub proposals: Option<Spanned<String>>,
    pub proposal_limits: Option<RawProposalLimits>,
    #[serde(default)]
    pub guidance: Vec<RawGuidance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProposalLimits {
    #[serde(default)]
    pub max_budget: Entries<Spanned<String>>,
    pub max_approval_expiry: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub tier: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTier {
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub id: Spanned<String>,
    pub description: Option<String>,
    pub actions: Option<Spanned<Vec<Spanned<String>>>>,
    pub agents: Option<Vec<Spanned<String>>>,
    pub tiers: Option<Vec<Spanned<String>>>,
    pub scope: Option<RawScope>,
    pub when: Option<Spanned<String>>,
    pub effect: Spanned<String>,
    pub reason: Option<Spanned<String>>,
    pub confidence_adjustment: Option<Spanned<f64>>,
    pub approval: Option<Spanned<RawApproval>>,
    pub permit: Option<Spanned<RawPermit>>,
    pub set: Option<Spanned<RawSet>>,
    pub protected: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScope {
    pub app: Option<String>,
    pub workflow: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApproval {
    #[serde(default)]
    pub approvers: Vec<String>,
    pub quorum: Option<Spanned<u32>>,
    pub expires_in: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPermit {
    pub expires_in: Option<Spanned<String>>,
    pub max_uses: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSet {
    pub mode: Option<String>,
    #[serde(default)]
    pub limits: Entries<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    pub id: Spanned<String>,
    pub per: Spanned<String>,
    pub limits: Option<Spanned<Entries<Spanned<String>>>>,
    pub count: Option<Spanned<RawCount>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCount {
    pub actions: Spanned<Vec<Spanned<String>>>,
    pub limit: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub id: Spanned<String>,
    pub actions: Spanned<Vec<Spanned<String>>>,
    pub per: Spanned<String>,
    pub limit: Spanned<u64>,
    pub window: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    #[serde(default)]
    pub keep: Vec<Spanned<String>>,
    #[serde(default)]
    pub redact: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuidance {
    pub name: String,
    pub content: String,
}
