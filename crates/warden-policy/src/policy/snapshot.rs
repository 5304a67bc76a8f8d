//! Decision snapshots: the fields of an action that a policy reads, kept with its decision,
//! and replaying a candidate policy over them ("what would this change flip?").
//!
//! The key design decision: a snapshot records which paths it holds, and a replay answers
//! only from held paths. When a rule that could apply reads a path the snapshot does not
//! hold, the replay is [`Replayed::Unknown`] and names the path: it never guesses. A path
//! that is held but that the action did not have is recorded as held and absent, so a replay
//! knows the field really was missing.
//!
//! What each rule reads is found once, when the policy is compiled ([`Reads`]), and so is what
//! the policy's snapshots hold ([`Plan`]), with `audit.redact` applied: a redacted path is
//! never held, nor anything that contains one. A snapshot keeps its values as a partial
//! [`Action`], so a replay runs the compiled conditions on it directly, and reading one
//! streams the JSON into that action without building the document first.

use super::evaluate::{Stop, stronger};
use super::{Policy, Rule, Scope, Tier};
use crate::action::{Action, ActionError, Env, MAX_DEPTH, value_depth};
use crate::audit::AuditSpec;
use crate::decision::Verdict;
use crate::expr::Expr;
use crate::expr::schema::{ActionField, FieldPath, FieldValue, Shape};
use crate::glob::Glob;
use crate::template::Template;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// What a replay of a candidate policy over a [`Snapshot`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// The verdict the candidate gives the recorded action, combined as
    /// [`Policy::evaluate`] combines it (budgets and rate limits are state, not replayed).
    Decided(Verdict),
    /// A rule that could apply reads `path`, which the snapshot does not hold.
    Unknown {
        /// The path, spelled canonically (`action.payload.amount`, `context.user`).
        path: String,
    },
}

/// Why bytes are not a snapshot.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not JSON of a snapshot's shape.
    #[error("not a snapshot: {0}")]
    Json(String),
    /// A held path is not usable.
    #[error("snapshot path `{path}` {problem}")]
    Path {
        /// The path as the snapshot spells it.
        path: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The held values do not make a valid action.
    #[error("snapshot values are not a valid action: {0}")]
    Action(#[from] ActionError),
}

/// The fields of one action that a policy reads, for replaying candidate policies over it.
/// Build one with [`Policy::snapshot`]; store it with [`Snapshot::to_json_bytes`].
///
/// The JSON form holds each held path once: `values` maps the paths the action had to their
/// values, `absent` lists the paths it did not have:
/// `{"values":{"action.type":"ticket.resolve","context.ticket.flags":["vip"]},"absent":["action.mode"]}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The held values, as an action that carries nothing else; `None` when the type is not
    /// held (a policy that redacts `action.type` keeps nothing).
    action: Option<Action>,
    held: Held,
}

impl Snapshot {
    /// The recorded action type, when the snapshot holds it.
    pub fn action_type(&self) -> Option<&str> {
        self.action.as_ref().map(|a| a.kind.as_str())
    }

    /// The recorded agent, when the snapshot holds it.
    pub fn agent(&self) -> Option<&str> {
        self.action.as_ref().and_then(|a| a.agent.as_deref())
    }

    /// The compact JSON form (see [`Snapshot`]).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        #[expect(
            clippy::expect_used,
            reason = "a snapshot is string-keyed JSON values written to memory, which cannot fail"
        )]
        serde_json::to_vec(self).expect("a snapshot serializes")
    }

    /// Reads the JSON form back, checking every path, and every value as an action's.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut problem = None;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        read(&mut de, &mut problem)
            .and_then(|snapshot| de.end().map(|()| snapshot))
            .map_err(|e| problem.unwrap_or_else(|| SnapshotError::Json(e.to_string())))
    }
}

impl Policy {
    /// The snapshot of `action` for this policy: every path a rule's condition or reason reads
    /// (tier presets included), and always the type, agent, on_behalf_of, target, app,
    /// workflow, mode, confidence, run_id and usage, minus what `audit.redact` covers. A path
    /// holding a value the audit log would mask (a redacted value copied into another field)
    /// is not held either.
    pub fn snapshot(&self, action: &Action) -> Snapshot {
        let plan = &self.snapshots.0;
        if !plan.has(ActionField::Type) {
            return Snapshot::default();
        }
        let masked = self.audit.masked_values(action);
        let shows = |value: Found<'_>| !masked.is_empty() && value.shows(&masked);
        let mut copy = Action::new(action.kind.clone());
        let mut fields = plan.fields;
        for field in plan.own_fields() {
            match found(action, field, &[]) {
                Some(value) if shows(value) => {
                    if field == ActionField::Type {
                        return Snapshot::default();
                    }
                    fields &= !within(field);
                }
                Some(_) if field != ActionField::Type => field.copy(action, &mut copy),
                _ => {}
            }
        }
        let mut dropped = Vec::new();
        for (i, path) in plan.json.iter().enumerate() {
            match found(action, path.field, &path.steps) {
                Some(value) if shows(value) => dropped.push(i),
                Some(Found::Json(value)) => {
                    if let Some(root) = json_root(&mut copy, path.field) {
                        insert(root, &path.steps, value.clone());
                    }
                }
                _ => {}
            }
        }
        // Commonly the snapshot holds all the plan does, and shares its list.
        let json = if dropped.is_empty() {
            Arc::clone(&plan.json)
        } else {
            let kept = plan.json.iter().enumerate();
            kept.filter(|(i, _)| !dropped.contains(i))
                .map(|(_, p)| p.clone())
                .collect()
        };
        Snapshot {
            action: Some(copy),
            held: Held { fields, json },
        }
    }

    /// Replays this (candidate) policy over a snapshot: the verdict [`Policy::evaluate`] would
    /// give the recorded action, or `Unknown` when a candidate rule for its type, whose
    /// filters do not already rule it out, reads a path the snapshot does not hold.
    pub fn replay(&self, snapshot: &Snapshot, env: &Env) -> Replayed {
        let Some(action) = &snapshot.action else {
            return Replayed::Unknown {
                path: ActionField::Type.path().to_owned(),
            };
        };
        let held = &snapshot.held;
        let admit = |paths: &[FieldPath]| match paths.iter().find(|p| !held.holds(p)) {
            Some(missing) => Err(missing.canonical()),
            None => Ok(()),
        };
        let (vars, tier) = self.vars(action, env);
        let candidates = self.index.candidates(action.kind.as_str());
        let mut strongest = None;
        let decide = |rule: &Rule| strongest = stronger(strongest, rule.effect);
        match self.matching(&candidates, &vars, tier, admit, decide) {
            Ok(()) => Replayed::Decided(self.verdict(strongest)),
            Err(Stop::Failed(..)) => Replayed::Decided(Verdict::Deny),
            Err(Stop::Refused(path)) => Replayed::Unknown { path },
        }
    }
}

/// The action paths one rule reads, found when the policy is compiled so that a replay
/// collects nothing per call. Each list is sorted, with no path inside another.
#[derive(Debug, Clone, Default)]
pub(super) struct Reads {
    /// What the agent, tier and scope filters read.
    filters: Box<[FieldPath]>,
    /// What the condition reads.
    condition: Box<[FieldPath]>,
    /// What the reason template reads: held in snapshots, but a reason never changes a
    /// verdict, so a replay does not need it.
    reason: Box<[FieldPath]>,
}

impl Reads {
    pub(super) fn new(
        agents: &[Glob],
        tiers: &[Tier],
        scope: &Scope,
        when: Option<&Expr>,
        reason: Option<&Template>,
    ) -> Self {
        let mut filters = Vec::new();
        for (field, read) in [
            (ActionField::Agent, !agents.is_empty() || !tiers.is_empty()),
            (ActionField::App, scope.app.is_some()),
            (ActionField::Workflow, scope.workflow.is_some()),
        ] {
            if read {
                filters.push(whole(field));
            }
        }
        let mut condition = Vec::new();
        if let Some(e) = when {
            e.reads(&mut condition);
        }
        let mut from_reason = Vec::new();
        if let Some(t) = reason {
            t.reads(&mut from_reason);
        }
        Self {
            filters: outermost(filters).into(),
            condition: outermost(condition).into(),
            reason: outermost(from_reason).into(),
        }
    }

    pub(super) fn filters(&self) -> &[FieldPath] {
        &self.filters
    }

    pub(super) fn condition(&self) -> &[FieldPath] {
        &self.condition
    }

    fn all(&self) -> impl Iterator<Item = &FieldPath> {
        self.filters
            .iter()
            .chain(self.condition.iter())
            .chain(self.reason.iter())
    }
}

/// Held in every snapshot (when not redacted): what identifies an action and what the
/// server's budgets and the audit log's fixed columns use.
const FIXED: [ActionField; 10] = [
    ActionField::Type,
    ActionField::Agent,
    ActionField::OnBehalfOf,
    ActionField::Target,
    ActionField::App,
    ActionField::Workflow,
    ActionField::Mode,
    ActionField::Confidence,
    ActionField::RunId,
    ActionField::Usage,
];

/// What a policy's snapshots hold, worked out once: the fixed fields and every path a rule
/// reads, minus what `audit.redact` covers. Nothing at all when the type cannot be held,
/// since a replay must know the type.
#[derive(Debug, Clone, Default)]
pub(super) struct Plan(Held);

impl Plan {
    pub(super) fn new(rules: &[Rule], audit: &AuditSpec) -> Self {
        let wanted = FIXED
            .into_iter()
            .map(whole)
            .chain(rules.iter().flat_map(|r| r.reads.all().cloned()));
        let mut allowed = Vec::new();
        for path in wanted {
            allow(path, audit, &mut allowed);
        }
        let mut fields = 0;
        let mut json = Vec::new();
        for path in outermost(allowed) {
            if path.steps.is_empty() {
                fields |= within(path.field);
            } else {
                json.push(path);
            }
        }
        if fields & bit(ActionField::Type) == 0 {
            return Self::default();
        }
        Self(Held {
            fields,
            json: json.into(),
        })
    }
}

/// Adds `path` to `out` unless a redaction covers it or lies inside it. A record with a
/// redacted field keeps its other fields; a JSON value with a redacted part is not held.
/// Nor is a path with a step that a dotted spelling cannot hold (CEL's escaped
/// `` action.payload.`a.b` ``), which would be read back as another path.
fn allow(path: FieldPath, audit: &AuditSpec, out: &mut Vec<FieldPath>) {
    if path.steps.iter().any(|s| s.is_empty() || s.contains('.')) {
        return;
    }
    if !audit.blocks(&path) {
        out.push(path);
    } else if path.field.shape() == Shape::Record && path.steps.is_empty() {
        for child in ActionField::children(Some(path.field)) {
            allow(whole(child), audit, out);
        }
    }
}

fn whole(field: ActionField) -> FieldPath {
    FieldPath {
        field,
        steps: Vec::new(),
    }
}

/// Sorted by field, then steps, so a path comes right before the paths inside it; each path
/// inside another (or repeated) is dropped, since holding the outer one holds it.
fn outermost(mut paths: Vec<FieldPath>) -> Vec<FieldPath> {
    sort(&mut paths);
    paths.dedup_by(|later, kept| kept.covers(later));
    paths
}

fn sort<P: std::borrow::Borrow<FieldPath>>(paths: &mut [P]) {
    paths.sort_by(|a, b| {
        let (a, b) = (a.borrow(), b.borrow());
        (a.field, &a.steps).cmp(&(b.field, &b.steps))
    });
}

fn bit(field: ActionField) -> u32 {
    1 << field as u32
}

/// The bits of `field` and of every field inside it.
fn within(field: ActionField) -> u32 {
    let mut bits = bit(field);
    if field.shape() == Shape::Record {
        for child in ActionField::children(Some(field)) {
            bits |= within(child);
        }
    }
    bits
}

/// The paths a snapshot holds, present or absent.
#[derive(Debug, Clone, Default, PartialEq)]
struct Held {
    /// Bit `f as u32` set when action field `f` is held whole: itself, or in a held record.
    fields: u32,
    /// Held paths inside `action.payload` and `context`, sorted, none inside another nor
    /// inside a held field; shared with the plan when a snapshot holds all of it.
    json: Arc<[FieldPath]>,
}

impl Held {
    fn has(&self, field: ActionField) -> bool {
        self.fields & bit(field) != 0
    }

    /// The fields held as paths of their own (not inside a held record), in table order.
    fn own_fields(&self) -> impl Iterator<Item = ActionField> + '_ {
        ActionField::ALL
            .into_iter()
            .filter(|f| self.has(*f) && f.parent().is_none_or(|p| !self.has(p)))
    }

    /// Whether the whole value at `path` is held.
    fn holds(&self, path: &FieldPath) -> bool {
        self.has(path.field) || (!path.steps.is_empty() && self.json.iter().any(|h| h.covers(path)))
    }
}

/// A held path's value in an action, borrowed.
#[derive(Debug, Clone, Copy)]
enum Found<'a> {
    Field(FieldValue<'a>),
    /// A record the action carries (`action.target`), with whichever fields it has.
    Record(&'a Action, ActionField),
    /// A value inside a JSON field (`context.user.role`).
    Json(&'a Value),
}

/// The value at `field` and `steps` in `action`, found as a condition finds it: JSON steps
/// go through objects only, and `null` inside a JSON field is a value.
fn found<'a>(action: &'a Action, field: ActionField, steps: &[String]) -> Option<Found<'a>> {
    if field.shape() == Shape::Record {
        return field
            .present(action)
            .then_some(Found::Record(action, field));
    }
    let value = field.get(action)?;
    if steps.is_empty() {
        return Some(Found::Field(value));
    }
    let FieldValue::Json(mut at) = value else {
        return None;
    };
    for step in steps {
        at = at.as_object()?.get(step)?;
    }
    Some(Found::Json(at))
}

impl Found<'_> {
    /// Whether the value shows any of `masked` (the redacted values the audit log masks).
    fn shows(self, masked: &[String]) -> bool {
        let text = |s: &str| masked.iter().any(|m| s.contains(m.as_str()));
        match self {
            Found::Field(FieldValue::Text(s)) => text(s),
            Found::Field(FieldValue::Double(d)) => text(&Value::from(d).to_string()),
            Found::Field(FieldValue::Int(i)) => text(&i.to_string()),
            Found::Field(FieldValue::Json(v)) | Found::Json(v) => json_shows(v, &text),
            Found::Record(action, record) => ActionField::children(Some(record))
                .filter_map(|f| f.get(action))
                .any(|v| Found::Field(v).shows(masked)),
        }
    }
}

fn json_shows(value: &Value, text: &impl Fn(&str) -> bool) -> bool {
    match value {
        Value::String(s) => text(s),
        Value::Number(n) => text(&n.to_string()),
        Value::Array(items) => items.iter().any(|v| json_shows(v, text)),
        Value::Object(map) => map.iter().any(|(k, v)| text(k) || json_shows(v, text)),
        Value::Null | Value::Bool(_) => false,
    }
}

impl Serialize for Found<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Found::Field(FieldValue::Text(t)) => s.serialize_str(t),
            Found::Field(FieldValue::Double(d)) => s.serialize_f64(d),
            Found::Field(FieldValue::Int(i)) => s.serialize_i64(i),
            Found::Field(FieldValue::Json(v)) | Found::Json(v) => v.serialize(s),
            Found::Record(action, record) => {
                let mut map = s.serialize_map(None)?;
                for f in ActionField::children(Some(record)) {
                    if let Some(value) = f.get(action) {
                        map.serialize_entry(f.name(), &Found::Field(value))?;
                    }
                }
                map.end()
            }
        }
    }
}

fn json_root(action: &mut Action, field: ActionField) -> Option<&mut Value> {
    match field {
        ActionField::Payload => Some(&mut action.payload),
        ActionField::Context => Some(&mut action.context),
        _ => None,
    }
}

/// Puts `value` at `steps` below `at`, making objects on the way. Snapshot paths never lie
/// inside one another, so nothing held is overwritten.
fn insert(at: &mut Value, steps: &[String], value: Value) {
    match steps.split_first() {
        None => *at = value,
        Some((step, rest)) => {
            if !at.is_object() {
                *at = Value::Object(Map::new());
            }
            if let Value::Object(map) = at {
                insert(map.entry(step.as_str()).or_insert(Value::Null), rest, value);
            }
        }
    }
}

impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(action) = &self.action {
            map.serialize_entry("values", &Values(action, &self.held))?;
            let absent = Absent(action, &self.held);
            if absent.paths().next().is_some() {
                map.serialize_entry("absent", &absent)?;
            }
        }
        map.end()
    }
}

/// The held paths an action has, with their values.
struct Values<'a>(&'a Action, &'a Held);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Values(action, held) = *self;
        let mut map = s.serialize_map(None)?;
        for field in held.own_fields() {
            if let Some(value) = found(action, field, &[]) {
                map.serialize_entry(field.canonical(), &value)?;
            }
        }
        for path in held.json.iter() {
            if let Some(value) = found(action, path.field, &path.steps) {
                map.serialize_entry(&path.canonical(), &value)?;
            }
        }
        map.end()
    }
}

/// The held paths an action does not have.
struct Absent<'a>(&'a Action, &'a Held);

impl Absent<'_> {
    fn paths(&self) -> impl Iterator<Item = String> + '_ {
        let Absent(action, held) = *self;
        let fields = held
            .own_fields()
            .filter(|f| found(action, *f, &[]).is_none());
        let json = held.json.iter();
        fields.map(|f| f.canonical().to_owned()).chain(
            json.filter(|p| found(action, p.field, &p.steps).is_none())
                .map(FieldPath::canonical),
        )
    }
}

impl Serialize for Absent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for path in self.paths() {
            seq.serialize_element(&path)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, &mut None)
    }
}

/// Reads the JSON form. A problem with what it holds (rather than with its JSON) is kept in
/// `problem`, for [`Snapshot::from_json_bytes`] to return as it is.
fn read<'de, D: Deserializer<'de>>(
    d: D,
    problem: &mut Option<SnapshotError>,
) -> Result<Snapshot, D::Error> {
    d.deserialize_map(Reader(problem))
}

struct Reader<'p>(&'p mut Option<SnapshotError>);

impl Reader<'_> {
    fn fail<E: de::Error>(&mut self, problem: SnapshotError) -> E {
        let message = problem.to_string();
        *self.0 = Some(problem);
        E::custom(message)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Section {
    Values,
    Absent,
}

impl<'de> Visitor<'de> for Reader<'_> {
    type Value = Snapshot;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of `values` and `absent`")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Snapshot, A::Error> {
        let (mut values, mut absent) = (None, None);
        while let Some(section) = map.next_key::<Section>()? {
            match section {
                Section::Values if values.is_none() => {
                    values = Some(map.next_value_seed(Entries(&mut self))?);
                }
                Section::Absent if absent.is_none() => {
                    absent = Some(map.next_value_seed(Paths(&mut self))?);
                }
                Section::Values => return Err(de::Error::duplicate_field("values")),
                Section::Absent => return Err(de::Error::duplicate_field("absent")),
            }
        }
        build(values.unwrap_or_default(), absent.unwrap_or_default())
            .map_err(|problem| self.fail(problem))
    }
}

/// A held value as read: a record comes field by field, so no map is built for it.
enum Entry {
    Value(Value),
    Record(Vec<(ActionField, Value)>),
}

/// `values`: each path with its value, as written.
struct Entries<'r, 'p>(&'r mut Reader<'p>);

impl<'de> DeserializeSeed<'de> for Entries<'_, '_> {
    type Value = Vec<(FieldPath, Entry)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_, '_> {
    type Value = Vec<(FieldPath, Entry)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of paths and their values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(path) = map.next_key_seed(PathSeed)? {
            let path = path.map_err(|problem| self.0.fail(problem))?;
            let entry = if path.field.shape() == Shape::Record {
                Entry::Record(map.next_value_seed(RecordSeed(path.field))?)
            } else {
                Entry::Value(map.next_value()?)
            };
            out.push((path, entry));
        }
        Ok(out)
    }
}

/// A record's fields, each with its value.
struct RecordSeed(ActionField);

impl<'de> DeserializeSeed<'de> for RecordSeed {
    type Value = Vec<(ActionField, Value)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed {
    type Value = Vec<(ActionField, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object of {}", ActionField::listing(Some(self.0)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(2);
        while let Some(field) = map.next_key_seed(ChildSeed(self.0))? {
            if out.iter().any(|(f, _)| *f == field) {
                return Err(de::Error::custom(format!(
                    "`{}` repeats `{}`",
                    self.0.path(),
                    field.name()
                )));
            }
            out.push((field, map.next_value()?));
        }
        Ok(out)
    }
}

/// The name of a field of a record.
struct ChildSeed(ActionField);

impl<'de> DeserializeSeed<'de> for ChildSeed {
    type Value = ActionField;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for ChildSeed {
    type Value = ActionField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "one of {}", ActionField::listing(Some(self.0)))
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<ActionField, E> {
        ActionField::child(Some(self.0), name).ok_or_else(|| {
            E::custom(format!(
                "`{}` has no field `{name}`; it has {}",
                self.0.path(),
                ActionField::listing(Some(self.0))
            ))
        })
    }
}

/// `absent`: a list of paths.
struct Paths<'r, 'p>(&'r mut Reader<'p>);

impl<'de> DeserializeSeed<'de> for Paths<'_, '_> {
    type Value = Vec<FieldPath>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Paths<'_, '_> {
    type Value = Vec<FieldPath>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of paths")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(path) = seq.next_element_seed(PathSeed)? {
            out.push(path.map_err(|problem| self.0.fail(problem))?);
        }
        Ok(out)
    }
}

/// One path, read from the string without copying it.
struct PathSeed;

impl<'de> DeserializeSeed<'de> for PathSeed {
    type Value = Result<FieldPath, SnapshotError>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for PathSeed {
    type Value = Result<FieldPath, SnapshotError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path such as `action.target.id` or `context.user`")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(parse_path(text))
    }
}

/// A path in its one canonical spelling (`context.user`, never `action.context.user`), so a
/// path cannot be held twice under two names.
fn parse_path(text: &str) -> Result<FieldPath, SnapshotError> {
    let bad = |problem| SnapshotError::Path {
        path: text.to_owned(),
        problem,
    };
    for root in [ActionField::Payload, ActionField::Context] {
        if let Some(rest) = text.strip_prefix(root.canonical())
            && let Some(rest) = rest.strip_prefix('.')
        {
            let steps: Vec<String> = rest.split('.').map(str::to_owned).collect();
            if steps.iter().any(String::is_empty) {
                return Err(bad("has an empty step"));
            }
            if steps.len() > MAX_DEPTH {
                return Err(bad("is deeper than an action nests"));
            }
            return Ok(FieldPath { field: root, steps });
        }
    }
    match ActionField::ALL.into_iter().find(|f| f.canonical() == text) {
        Some(field) => Ok(whole(field)),
        None => Err(bad("is not a path into the action, spelled canonically")),
    }
}

/// The snapshot `values` and `absent` describe, checked: no path held twice or inside
/// another, the type present whenever anything is held, and every value as an action's.
fn build(
    mut values: Vec<(FieldPath, Entry)>,
    absent: Vec<FieldPath>,
) -> Result<Snapshot, SnapshotError> {
    let problem = |path: &FieldPath, problem| SnapshotError::Path {
        path: path.canonical(),
        problem,
    };
    let mut fields = 0;
    let mut json: Vec<&FieldPath> = Vec::new();
    let listed = values.iter().map(|(p, v)| (p, Some(v)));
    for (path, value) in listed.chain(absent.iter().map(|p| (p, None))) {
        if !path.steps.is_empty() {
            json.push(path);
            continue;
        }
        match value {
            Some(Entry::Value(Value::Null)) => {
                return Err(problem(
                    path,
                    "holds null; a field the action lacks is `absent`",
                ));
            }
            None if path.field == ActionField::Type => {
                return Err(problem(path, "cannot be absent: every action has a type"));
            }
            _ => {}
        }
        // A field's bits include those inside it, so this finds a record held with its field.
        if fields & within(path.field) != 0 {
            return Err(problem(path, "is held twice, or inside another held path"));
        }
        fields |= within(path.field);
    }
    sort(&mut json);
    let inside = |(i, p): (usize, &&FieldPath)| {
        fields & bit(p.field) != 0 || (i > 0 && json[i - 1].covers(p))
    };
    if let Some((_, path)) = json.iter().enumerate().find(|&(i, p)| inside((i, p))) {
        return Err(problem(path, "is held twice, or inside another held path"));
    }
    let (nothing, count) = (fields == 0 && json.is_empty(), json.len());
    drop(json);
    let Some(at) = values
        .iter()
        .position(|(p, _)| *p == whole(ActionField::Type))
    else {
        if nothing {
            return Ok(Snapshot::default());
        }
        let path = whole(ActionField::Type);
        return Err(problem(
            &path,
            "is missing, but a snapshot that holds anything holds it",
        ));
    };
    let mut action = match values.remove(at).1 {
        Entry::Value(kind) => Action::of_type(kind)?,
        Entry::Record(_) => return Err(problem(&whole(ActionField::Type), "is not a record")),
    };
    let mut held = Vec::with_capacity(count);
    for (path, entry) in values {
        let value = match entry {
            // A record is created even when it has no field: the action carried it.
            Entry::Record(fields) if fields.is_empty() => Value::Object(Map::new()),
            Entry::Record(fields) => {
                for (field, value) in fields {
                    action.set(field, value)?;
                }
                continue;
            }
            Entry::Value(value) => value,
        };
        match json_root(&mut action, path.field) {
            Some(root) if !path.steps.is_empty() => {
                // The action's object and each step's object count as a level.
                if 1 + path.steps.len() + value_depth(&value) > MAX_DEPTH {
                    return Err(ActionError::TooDeep.into());
                }
                insert(root, &path.steps, value);
                held.push(path);
            }
            _ => action.set(path.field, value)?,
        }
    }
    held.extend(absent.into_iter().filter(|p| !p.steps.is_empty()));
    sort(&mut held);
    Ok(Snapshot {
        action: Some(action),
        held: Held {
            fields,
            json: held.into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Timestamp;
    use serde_json::json;

    fn env() -> Env {
        Env::new("acme", Timestamp::from_unix_seconds(1_700_000_000).unwrap())
    }

    fn policy(source: &str) -> Policy {
        Policy::parse(source).unwrap_or_else(|e| panic!("policy does not parse:\n{e}"))
    }

    fn action(value: Value) -> Action {
        Action::from_value(value).unwrap()
    }

    /// The snapshot's JSON form, as a value.
    fn json_of(snapshot: &Snapshot) -> Value {
        serde_json::from_slice(&snapshot.to_json_bytes()).unwrap()
    }

    /// Takes each action's snapshot with `recorder`, stores and reads it back, and replays
    /// `candidate` over it.
    fn check(recorder: &str, candidate: &str, table: &[(Value, Replayed)]) {
        let (recorder, candidate) = (policy(recorder), policy(candidate));
        for (value, expected) in table {
            let bytes = recorder.snapshot(&action(value.clone())).to_json_bytes();
            let snapshot = Snapshot::from_json_bytes(&bytes).unwrap();
            assert_eq!(
                candidate.replay(&snapshot, &env()),
                *expected,
                "action {value}, snapshot {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    /// Every path the snapshot holds, present or absent.
    fn held(snapshot: &Snapshot) -> Vec<String> {
        let held = &snapshot.held;
        let fields = held.own_fields().map(|f| f.canonical().to_owned());
        fields
            .chain(held.json.iter().map(FieldPath::canonical))
            .collect()
    }

    fn decided(verdict: Verdict) -> Replayed {
        Replayed::Decided(verdict)
    }

    fn unknown(path: &str) -> Replayed {
        Replayed::Unknown {
            path: path.to_owned(),
        }
    }

    const SUPPORT: &str = r#"
version: 1.0.0
default: deny
agents:
  "support-*": {tier: draft}
  triage-bot: {tier: observe}
rules:
  - id: low-confidence
    actions: [ticket.resolve]
    when: action.confidence < 0.85
    effect: deny
    reason: "confidence {{action.confidence}} is too low for {{context.user.name}}"
  - id: vip-hold
    actions: [ticket.resolve]
    when: '"vip" in context.ticket.flags'
    effect: require_approval
  - id: big-refund
    actions: [billing.refund]
    when: action.payload.amount > 500
    effect: require_approval
  - id: support-may-act
    actions: ["ticket.*", billing.refund]
    agents: ["support-*"]
    effect: allow
"#;

    fn resolve() -> Value {
        json!({
            "type": "ticket.resolve", "id": "req-1",
            "target": {"type": "ticket", "id": "T-1042"}, "confidence": 0.92,
            "agent": "support-bot", "app": "helpdesk",
            "payload": {"resolution": "refund issued", "amount": 40},
            "context": {"ticket": {"flags": ["vip"], "priority": "high"},
                        "user": {"name": "Ann", "role": "agent"}},
            "usage": {"tokens": 1200, "cost_usd": 0.004}
        })
    }

    #[test]
    fn a_snapshot_holds_the_fields_rules_read_and_the_fixed_ones() {
        let snapshot = policy(SUPPORT).snapshot(&action(resolve()));
        assert_eq!(
            json_of(&snapshot),
            json!({
                "values": {
                    "action.type": "ticket.resolve",
                    "action.target": {"type": "ticket", "id": "T-1042"},
                    "action.confidence": 0.92,
                    "action.agent": "support-bot",
                    "action.app": "helpdesk",
                    "action.usage": {"tokens": 1200, "cost_usd": 0.004},
                    // The tier presets' `action.type`, big-refund's condition and
                    // low-confidence's reason, whichever rules the type has.
                    "action.payload.amount": 40,
                    "context.ticket.flags": ["vip"],
                    "context.user.name": "Ann",
                },
                "absent": ["action.mode", "action.on_behalf_of", "action.workflow", "action.run_id"]
            })
        );
        let read = Snapshot::from_json_bytes(&snapshot.to_json_bytes()).unwrap();
        assert_eq!(
            (read.action_type(), read.agent()),
            (Some("ticket.resolve"), Some("support-bot"))
        );
        // Not read by any rule: the idempotency key, the resolution, the priority, the role.
        let text = String::from_utf8(snapshot.to_json_bytes()).unwrap();
        for unread in ["req-1", "refund issued", "high", "role"] {
            assert!(!text.contains(unread), "{unread} in {text}");
        }
    }

    #[test]
    fn reading_a_whole_value_holds_all_of_it() {
        let recorder = policy(
            r#"
version: 1.0.0
rules:
  - {id: a, actions: [x.y], when: 'has(action.payload.note)', effect: deny}
  - {id: b, actions: [x.y], when: 'size(context.user) > 1', effect: deny}
  - {id: c, actions: [x.y], when: 'context.user.role == "agent"', effect: deny}
"#,
        );
        let snapshot = recorder.snapshot(&action(json!({
            "type": "x.y",
            "payload": {"amount": 5, "items": [1, 2]},
            "context": {"user": {"role": "agent", "name": "Ann"}, "other": 1}
        })));
        let values = json_of(&snapshot)["values"].clone();
        assert_eq!(
            values["action.payload"],
            json!({"amount": 5, "items": [1, 2]})
        );
        assert_eq!(
            values["context.user"],
            json!({"role": "agent", "name": "Ann"})
        );
        // Inside `context.user`, so not held again; `context.other` is read by no rule.
        assert!(values.get("context.user.role").is_none());
        assert!(
            !snapshot
                .to_json_bytes()
                .windows(7)
                .any(|w| w == b"\"other\"")
        );
    }

    #[test]
    fn a_redacted_field_is_not_held_and_its_value_is_nowhere_in_the_snapshot() {
        let source = r#"
version: 1.0.0
agents: {"support-*": {tier: sandbox}}
rules:
  - id: internal-only
    actions: [email.send]
    when: 'context.user.email.endsWith("@example.com") && action.payload.to != ""'
    effect: allow
    reason: "{{context.user.email}} may write to {{action.payload.to}}"
  - {id: whole-user, actions: [email.send], when: 'size(context.user) > 0', effect: allow}
  - {id: role, actions: [email.send], when: 'context.user.role == "agent"', effect: allow}
  - {id: target, actions: [email.send], when: 'action.target.type == "mail"', effect: allow}
audit:
  redact: [context.user.email, action.target.id]
"#;
        let recorder = policy(source);
        let email = action(json!({
            "type": "email.send", "agent": "support-bot",
            "target": {"type": "mail", "id": "secret-thread-77"},
            // The redacted address is copied into the payload too.
            "payload": {"to": "ann@example.com"},
            "context": {"user": {"email": "ann@example.com", "role": "agent"}}
        }));
        let snapshot = recorder.snapshot(&email);
        let text = String::from_utf8(snapshot.to_json_bytes()).unwrap();
        assert!(!text.contains("ann@example.com"), "{text}");
        assert!(!text.contains("secret-thread-77"), "{text}");
        let values = json_of(&snapshot)["values"].clone();
        assert_eq!(values["context.user.role"], "agent");
        // The record loses its redacted field, keeps the other.
        assert_eq!(values["action.target.type"], "mail");
        for not_held in [
            "context.user.email",
            "context.user",
            "action.payload.to",
            "action.target",
            "action.target.id",
        ] {
            assert!(
                !held(&snapshot).iter().any(|p| p == not_held),
                "{not_held} is held: {text}"
            );
        }
        // A replay cannot know what a condition on the redacted address says.
        let reads_email = "version: 1.0.0\nrules:\n  - {id: e, actions: [email.send], when: 'context.user.email == \"x\"', effect: deny}\n";
        assert_eq!(
            policy(reads_email).replay(&snapshot, &env()),
            unknown("context.user.email")
        );
    }

    #[test]
    fn a_policy_replayed_over_its_own_snapshots_agrees_with_evaluating() {
        let actions = [
            resolve(),
            json!({"type": "ticket.resolve", "agent": "support-bot", "confidence": 0.5}),
            json!({"type": "ticket.resolve", "agent": "triage-bot", "context": {"ticket": {"flags": []}}}),
            json!({"type": "ticket.get", "agent": "triage-bot"}),
            json!({"type": "ticket.resolve", "agent": "support-bot", "context": {"ticket": {"flags": ["x"]}}}),
            // `flags` is a string: `in` cannot be evaluated, so the decision fails closed.
            json!({"type": "ticket.resolve", "agent": "support-bot", "context": {"ticket": {"flags": "vip"}}}),
            json!({"type": "billing.refund", "agent": "support-bot", "payload": {"amount": 900}}),
            json!({"type": "billing.refund", "agent": "support-bot", "payload": {"amount": 9}}),
            json!({"type": "billing.refund", "agent": "support-bot"}),
            json!({"type": "billing.refund"}),
            json!({"type": "deploy.run", "agent": "support-bot"}),
        ];
        for source in [
            SUPPORT,
            include_str!("../../../../examples/nexus/nexus.yaml"),
        ] {
            let policy = policy(source);
            for value in &actions {
                let action = action(value.clone());
                let snapshot = policy.snapshot(&action);
                let stored = Snapshot::from_json_bytes(&snapshot.to_json_bytes()).unwrap();
                let evaluated = policy.evaluate(&action, &env()).verdict;
                assert_eq!(
                    policy.replay(&stored, &env()),
                    decided(evaluated),
                    "action {value}"
                );
            }
        }
    }

    #[test]
    fn a_candidate_reading_a_path_the_snapshot_lacks_is_unknown() {
        let candidate = |rule: &str| SUPPORT.replace("rules:\n", &format!("rules:\n{rule}\n"));
        let table = |expected: Replayed| [(resolve(), expected)];
        // A payload field no rule of the recorder reads.
        let note = "  - {id: n, actions: [ticket.resolve], when: 'action.payload.note == \"x\"', effect: deny}";
        check(
            SUPPORT,
            &candidate(note),
            &table(unknown("action.payload.note")),
        );
        // All of `context.user`, when only its name is held.
        let user =
            "  - {id: u, actions: [\"ticket.*\"], when: 'size(context.user) > 3', effect: deny}";
        check(SUPPORT, &candidate(user), &table(unknown("context.user")));
        // The idempotency key is not a fixed field.
        let id = "  - {id: i, actions: [\"*\"], when: 'action.id == \"req-1\"', effect: deny}";
        check(SUPPORT, &candidate(id), &table(unknown("action.id")));
        // A rule whose filters rule the action out does not need its condition's paths.
        let other_agent = "  - {id: o, actions: [ticket.resolve], agents: [billing-bot], when: 'action.payload.note == \"x\"', effect: deny}";
        check(
            SUPPORT,
            &candidate(other_agent),
            &table(decided(Verdict::RequireApproval)),
        );
        // A rule for other action types does not matter either.
        let other_type = "  - {id: t, actions: [email.send], when: 'action.payload.note == \"x\"', effect: deny}";
        check(
            SUPPORT,
            &candidate(other_type),
            &table(decided(Verdict::RequireApproval)),
        );
    }

    #[test]
    fn filters_need_their_fields_held() {
        let redacting = format!("{SUPPORT}audit: {{redact: [action.agent]}}\n");
        // Without the agent, neither `agents:` nor the tier presets can be applied.
        check(&redacting, SUPPORT, &[(resolve(), unknown("action.agent"))]);
        let scoped = SUPPORT.replace(
            "    agents: [\"support-*\"]\n",
            "    agents: [\"support-*\"]\n    scope: {workflow: refunds}\n",
        );
        let no_workflow = format!("{SUPPORT}audit: {{redact: [action.workflow]}}\n");
        check(
            &no_workflow,
            &scoped,
            &[(resolve(), unknown("action.workflow"))],
        );
        // A redacted type leaves nothing to replay.
        let no_type = format!("{SUPPORT}audit: {{redact: [action.type]}}\n");
        assert_eq!(
            json_of(&policy(&no_type).snapshot(&action(resolve()))),
            json!({})
        );
        check(&no_type, SUPPORT, &[(resolve(), unknown("action.type"))]);
    }

    #[test]
    fn a_candidate_reading_only_held_paths_is_decided() {
        // A stricter confidence bar now denies what was held for approval.
        let stricter = SUPPORT.replace("action.confidence < 0.85", "action.confidence < 0.95");
        check(SUPPORT, &stricter, &[(resolve(), decided(Verdict::Deny))]);
        // The fixed fields are there for any candidate, whatever the recorder read.
        let fixed = r#"
version: 1.0.0
default: allow
rules:
  - id: fixed
    actions: ["*"]
    when: action.app == "helpdesk" && action.usage.tokens > 1000 && action.target.id.startsWith("T-")
    effect: deny
    reason: "{{action.payload.unheld}} is only in a reason, which a verdict does not need"
"#;
        let nothing = "version: 1.0.0\nrules: []\n";
        check(nothing, fixed, &[(resolve(), decided(Verdict::Deny))]);
        // Tiers come from the candidate's own bindings.
        let observed = SUPPORT.replace(
            "\"support-*\": {tier: draft}",
            "\"support-*\": {tier: observe}",
        );
        check(SUPPORT, &observed, &[(resolve(), decided(Verdict::Deny))]);
    }

    #[test]
    fn held_and_absent_fields_behave_as_missing() {
        let recorder = r#"
version: 1.0.0
rules:
  - {id: p, actions: [x.y], when: 'context.ticket.priority == "high"', effect: deny}
  - {id: n, actions: [x.y], when: 'has(action.payload.note)', effect: deny}
"#;
        let bare = json!({"type": "x.y", "payload": {"amount": 3}});
        let snapshot = policy(recorder).snapshot(&action(bare.clone()));
        assert_eq!(
            json_of(&snapshot)["absent"],
            json!([
                "action.target",
                "action.confidence",
                "action.mode",
                "action.agent",
                "action.on_behalf_of",
                "action.app",
                "action.workflow",
                "action.run_id",
                "action.usage",
                "context.ticket.priority"
            ])
        );
        let candidate = |when: &str| {
            format!(
                "version: 1.0.0\ndefault: allow\nrules:\n  - {{id: c, actions: [x.y], when: '{when}', effect: require_approval}}\n"
            )
        };
        for (when, expected) in [
            ("has(action.workflow)", Verdict::Allow),
            ("!has(action.target)", Verdict::RequireApproval),
            ("has(action.payload.note)", Verdict::Allow),
            ("has(action.payload.amount)", Verdict::RequireApproval),
            // Reading a missing field is an evaluation error, as it was for the action.
            ("action.workflow == \"w\"", Verdict::Deny),
            ("context.ticket.priority == \"high\"", Verdict::Deny),
        ] {
            check(
                recorder,
                &candidate(when),
                &[(bare.clone(), decided(expected))],
            );
        }
    }

    #[test]
    fn a_snapshot_round_trips_through_its_bytes() {
        let policy = policy(SUPPORT);
        for value in [
            resolve(),
            json!({"type": "a.b"}),
            json!({"type": "a.b", "target": {}, "context": {"user": {"name": null}}}),
        ] {
            let snapshot = policy.snapshot(&action(value));
            let bytes = snapshot.to_json_bytes();
            assert_eq!(Snapshot::from_json_bytes(&bytes).unwrap(), snapshot);
            let via_serde: Snapshot = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(via_serde, snapshot);
        }
        assert_eq!(
            Snapshot::from_json_bytes(b"{}").unwrap(),
            Snapshot::default()
        );
    }

    #[test]
    fn paths_read_back_as_the_paths_written() {
        let mut paths: Vec<FieldPath> = ActionField::ALL.into_iter().map(whole).collect();
        for (field, steps) in [
            (ActionField::Payload, vec!["amount"]),
            (ActionField::Context, vec!["user", "role"]),
        ] {
            let steps = steps.into_iter().map(str::to_owned).collect();
            paths.push(FieldPath { field, steps });
        }
        for path in paths {
            assert_eq!(parse_path(&path.canonical()), Ok(path.clone()));
            // The schema reads the same text as the same path.
            assert_eq!(FieldPath::parse(&path.canonical()), Ok(path));
        }
    }

    /// CEL's escaped identifiers can put a dot inside a step, which a dotted path would read
    /// back as two steps: another field. Such a path is never held.
    #[test]
    fn a_step_with_a_dot_is_not_held() {
        let source = "version: 1.0.0\nrules:\n  - {id: d, actions: [x.y], when: 'action.payload.`a.b` == 1', effect: deny}\n";
        let recorder = policy(source);
        let value = json!({"type": "x.y", "payload": {"a.b": 1, "a": {"b": 2}}});
        let snapshot = recorder.snapshot(&action(value));
        assert!(
            !String::from_utf8(snapshot.to_json_bytes())
                .unwrap()
                .contains("payload")
        );
        assert_eq!(
            recorder.replay(&snapshot, &env()),
            unknown("action.payload.a.b")
        );
    }

    #[test]
    fn bad_bytes_are_refused_with_the_reason() {
        for (bytes, message) in [
            (&b"nope"[..], "not a snapshot"),
            (br#"{"values": {}, "extra": 1}"#, "unknown field `extra`"),
            (br#"{"values": {"action.type": "a.b", "action.colour": 1}}"#, "`action.colour` is not a path"),
            (br#"{"values": {"action.type": "a.b", "action.context.x": 1}}"#, "spelled canonically"),
            (br#"{"values": {"action.type": "a.b", "context.u": {}}, "absent": ["context.u.x"]}"#, "inside another held path"),
            (br#"{"values": {"action.type": "a.b", "action.target": {}, "action.target.id": "x"}}"#, "inside another held path"),
            (br#"{"values": {"action.type": "a.b", "action.agent": null}}"#, "holds null"),
            (br#"{"values": {"action.type": "a.b"}, "absent": ["action.type"]}"#, "cannot be absent"),
            (br#"{"values": {"action.agent": "x"}}"#, "`action.type` is missing"),
            (br#"{"values": {"action.type": "a.b", "action.confidence": 1.5}}"#, "outside [0, 1]"),
            (br#"{"values": {"action.type": "a b"}}"#, "invalid `type`"),
            (br#"{"values": {"action.type": "a.b", "action.payload": {}}, "absent": ["action.payload.x"]}"#, "inside another held path"),
            (br#"{"values": {"action.type": "a.b", "context..x": 1}}"#, "empty step"),
            (br#"{"values": {"action.type": "a.b", "action.payload": 1}}"#, "invalid `payload`"),
            (br#"{"values": {}, "values": {}}"#, "duplicate field `values`"),
            (br#"{"values": {"action.type": "a.b"}} x"#, "trailing characters"),
        ] {
            let err = Snapshot::from_json_bytes(bytes).unwrap_err().to_string();
            assert!(err.contains(message), "{}: {err}", String::from_utf8_lossy(bytes));
        }
    }
}
