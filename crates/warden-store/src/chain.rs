//! The audit hash chain: canonical event bytes, hashing, checkpoints and the verifying walk.
//!
//! Key decision: the hash covers a canonical JSON rendering of *every* stored field,
//! including `seq` and `prev_hash`, recomputed from the columns on verification. Editing
//! any column, or moving a row to another seq, changes the hash. The rendering is plain
//! JSON so a verifier in another language can reproduce it: object keys sorted by byte
//! order at every depth, no whitespace, strings and numbers as `serde_json` writes them
//! (floats in shortest round-trip form).
//!
//! This module does no I/O; the backends feed it rows in seq order.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::model::{BrokenLink, ChainProblem, Event, NewEvent, VerifyReport};

/// The `prev_hash` of the first event (seq 1): 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The bytes whose SHA-256 is the hash of `event` stored at `seq` after `prev_hash`.
///
/// Fields appear in this struct's order, which is alphabetical so that the output is
/// also what a generic sorted-keys JSON encoder produces. Do not reorder or rename them:
/// every stored hash depends on it. Every field is present (`null` when unset) except
/// `policy_hash`, added later, which is present only when set.
#[derive(Serialize)]
struct CanonicalEvent<'a> {
    action_type: Option<&'a str>,
    agent: Option<&'a str>,
    confidence_adjusted: Option<f64>,
    confidence_initial: Option<f64>,
    context_digest: Option<&'a str>,
    decision_id: Option<&'a str>,
    detail: Sorted<'a>,
    effect: Option<&'a str>,
    id: &'a str,
    kept: Sorted<'a>,
    kind: &'a str,
    mode: Option<&'a str>,
    on_behalf_of: Option<&'a str>,
    payload_digest: Option<&'a str>,
    // Absent rather than null when unset: events from before policy hashes were recorded
    // keep their hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_hash: Option<&'a str>,
    policy_version: Option<&'a str>,
    prev_hash: &'a str,
    reasons: &'a [String],
    rule_ids: &'a [String],
    seq: i64,
    target_id: Option<&'a str>,
    target_type: Option<&'a str>,
    tenant: &'a str,
    time_ms: i64,
}

/// A JSON value rendered with object keys sorted at every depth, whatever order the map
/// holds them in (serde_json's `preserve_order` feature may be on elsewhere in the build).
/// The one canonical form: the chain hashes it, and the server's digests key it.
#[derive(Debug, Clone, Copy)]
pub struct Sorted<'a>(pub &'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &Sorted(value))?;
                }
                out.end()
            }
            Value::Array(items) => serializer.collect_seq(items.iter().map(Sorted)),
            scalar => scalar.serialize(serializer),
        }
    }
}

/// The canonical bytes of `event` stored at `seq` after `prev_hash`; its hash is their SHA-256.
pub fn canonical_bytes(seq: i64, prev_hash: &str, event: &NewEvent) -> Result<Vec<u8>, StoreError> {
    let canonical = CanonicalEvent {
        action_type: event.action_type.as_deref(),
        agent: event.agent.as_deref(),
        confidence_adjusted: event.confidence_adjusted,
        confidence_initial: event.confidence_initial,
        context_digest: event.context_digest.as_deref(),
        decision_id: event.decision_id.as_deref(),
        detail: Sorted(&event.detail),
        effect: event.effect.as_deref(),
        id: &event.id,
        kept: Sorted(&event.kept),
        kind: &event.kind,
        mode: event.mode.as_deref(),
        on_behalf_of: event.on_behalf_of.as_deref(),
        payload_digest: event.payload_digest.as_deref(),
        policy_hash: event.policy_hash.as_deref(),
        policy_version: event.policy_version.as_deref(),
        prev_hash,
        reasons: &event.reasons,
        rule_ids: &event.rule_ids,
        seq,
        target_id: event.target_id.as_deref(),
        target_type: event.target_type.as_deref(),
        tenant: &event.tenant,
        time_ms: event.time_ms,
    };
    serde_json::to_vec(&canonical).map_err(|source| StoreError::Encode {
        id: event.id.clone(),
        source,
    })
}

/// The lowercase hex SHA-256 chain hash of `event` stored at `seq` after `prev_hash`.
pub fn event_hash(seq: i64, prev_hash: &str, event: &NewEvent) -> Result<String, StoreError> {
    let bytes = canonical_bytes(seq, prev_hash, event)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// `value` as canonical JSON text (sorted keys), the form stored in `kept` and `detail` columns.
pub(crate) fn canonical_json(id: &str, value: &Value) -> Result<String, StoreError> {
    serde_json::to_string(&Sorted(value)).map_err(|source| StoreError::Encode {
        id: id.to_owned(),
        source,
    })
}

/// The `detail` of a checkpoint event written by a purge.
///
/// `purged_through_seq` and `anchor_hash` are what verification needs: after a purge
/// the oldest remaining event has seq `purged_through_seq + 1` and `prev_hash ==
/// anchor_hash`. The other fields are for the humans reading the log.
pub(crate) fn checkpoint_detail(
    purged_through_seq: i64,
    anchor_hash: &str,
    purged: u64,
    older_than_ms: i64,
) -> Value {
    json!({
        "purged_through_seq": purged_through_seq,
        "anchor_hash": anchor_hash,
        "purged": purged,
        "older_than_ms": older_than_ms,
    })
}

/// The `(purged_through_seq, anchor_hash)` a checkpoint event's detail records, if well formed.
pub(crate) fn checkpoint_anchor(detail: &Value) -> Option<(i64, String)> {
    let through = detail.get("purged_through_seq")?.as_i64()?;
    let anchor = detail.get("anchor_hash")?.as_str()?;
    Some((through, anchor.to_owned()))
}

/// A stored row whose columns could not be decoded into an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnreadableRow {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) detail: String,
}

/// The state of a verification walk over rows fed in ascending seq order, in pages.
///
/// It stops at the first broken link; later pages are then ignored.
#[derive(Debug)]
pub(crate) struct ChainWalk {
    /// `(purged_through_seq, anchor_hash)` of every checkpoint event in the table.
    anchors: Vec<(i64, String)>,
    /// Seq and hash of the last row that verified.
    last: Option<(i64, String)>,
    checked: u64,
    broken: Option<BrokenLink>,
}

impl ChainWalk {
    /// Starts a walk that accepts a purged start anchored by one of `anchors`.
    pub(crate) fn new(anchors: Vec<(i64, String)>) -> Self {
        Self {
            anchors,
            last: None,
            checked: 0,
            broken: None,
        }
    }

    /// Whether a broken link was found, so that the caller can stop reading rows.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Checks the next rows, which must follow the previous page in ascending seq order.
    pub(crate) fn feed(
        &mut self,
        rows: Vec<Result<Event, UnreadableRow>>,
    ) -> Result<(), StoreError> {
        for row in rows {
            if self.broken.is_some() {
                break;
            }
            self.checked += 1;
            let event = match row {
                Ok(event) => event,
                Err(row) => {
                    self.broken = Some(BrokenLink {
                        seq: row.seq,
                        event_id: row.id,
                        problem: ChainProblem::Unreadable(row.detail),
                    });
                    break;
                }
            };
            if let Some(problem) = self.check(&event)? {
                self.broken = Some(BrokenLink {
                    seq: event.seq,
                    event_id: event.event.id,
                    problem,
                });
                break;
            }
            self.last = Some((event.seq, event.hash));
        }
        Ok(())
    }

    /// What is wrong with `event` given everything before it, if anything.
    fn check(&self, event: &Event) -> Result<Option<ChainProblem>, StoreError> {
        // Continuity first: a gap explains a prev_hash mismatch, not the other way round.
        match &self.last {
            Some((last_seq, _)) if event.seq != last_seq + 1 => {
                return Ok(Some(ChainProblem::Missing {
                    from: last_seq + 1,
                    to: event.seq - 1,
                }));
            }
            None if event.seq != 1 && !self.anchored(event) => {
                return Ok(Some(ChainProblem::Unanchored {
                    missing_through: event.seq - 1,
                }));
            }
            _ => {}
        }
        if event_hash(event.seq, &event.prev_hash, &event.event)? != event.hash {
            return Ok(Some(ChainProblem::HashMismatch));
        }
        let expected_prev = match &self.last {
            Some((_, hash)) => hash.as_str(),
            // seq 1; a purged start was matched against its anchor above.
            None if event.seq == 1 => GENESIS_HASH,
            None => event.prev_hash.as_str(),
        };
        if event.prev_hash != expected_prev {
            return Ok(Some(ChainProblem::PrevHashMismatch));
        }
        Ok(None)
    }

    /// Whether a checkpoint records a purge that ends right before `event` at its prev_hash.
    fn anchored(&self, event: &Event) -> bool {
        self.anchors
            .iter()
            .any(|(through, anchor)| *through == event.seq - 1 && *anchor == event.prev_hash)
    }

    /// The final report.
    pub(crate) fn report(self) -> VerifyReport {
        VerifyReport {
            events_checked: self.checked,
            first_broken: self.broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewEvent {
        NewEvent {
            id: "01JD8Z9R6W3K2Q5N7X4T0M1B8C".into(),
            time_ms: 1_700_000_000_000,
            tenant: "acme".into(),
            kind: "decision".into(),
            agent: Some("support-bot".into()),
            action_type: Some("ticket.resolve".into()),
            confidence_initial: Some(0.82),
            confidence_adjusted: Some(0.72),
            effect: Some("deny".into()),
            rule_ids: vec!["low-confidence-resolve".into()],
            reasons: vec!["too \"low\"".into()],
            kept: json!({"z": 1, "a": {"y": [true, null], "b": 1.5}}),
            ..NewEvent::default()
        }
    }

    #[test]
    fn canonical_bytes_are_sorted_compact_json_of_every_field() {
        let bytes = canonical_bytes(7, GENESIS_HASH, &sample()).unwrap();
        let expected = format!(
            concat!(
                r#"{{"action_type":"ticket.resolve","agent":"support-bot","confidence_adjusted":0.72,"#,
                r#""confidence_initial":0.82,"context_digest":null,"decision_id":null,"detail":null,"#,
                r#""effect":"deny","id":"01JD8Z9R6W3K2Q5N7X4T0M1B8C","kept":{{"a":{{"b":1.5,"y":[true,null]}},"z":1}},"#,
                r#""kind":"decision","mode":null,"on_behalf_of":null,"payload_digest":null,"#,
                r#""policy_version":null,"prev_hash":"{}","reasons":["too \"low\""],"#,
                r#""rule_ids":["low-confidence-resolve"],"seq":7,"target_id":null,"target_type":null,"#,
                r#""tenant":"acme","time_ms":1700000000000}}"#
            ),
            GENESIS_HASH
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn the_policy_hash_is_hashed_only_when_set_so_older_events_keep_their_hashes() {
        let mut event = sample();
        let without = String::from_utf8(canonical_bytes(7, GENESIS_HASH, &event).unwrap()).unwrap();
        assert!(!without.contains("policy_hash"), "{without}");
        event.policy_hash = Some("ab".repeat(32));
        let with = String::from_utf8(canonical_bytes(7, GENESIS_HASH, &event).unwrap()).unwrap();
        let expected = format!(
            r#""payload_digest":null,"policy_hash":"{}","policy_version":null,"#,
            "ab".repeat(32)
        );
        assert!(with.contains(&expected), "{with}");
    }

    #[test]
    fn hash_is_sha256_of_canonical_bytes_and_depends_on_position() {
        let event = sample();
        let hash = event_hash(7, GENESIS_HASH, &event).unwrap();
        let bytes = canonical_bytes(7, GENESIS_HASH, &event).unwrap();
        assert_eq!(hash, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(hash.len(), 64);
        assert_ne!(hash, event_hash(8, GENESIS_HASH, &event).unwrap());
        assert_ne!(hash, event_hash(7, &"1".repeat(64), &event).unwrap());
    }

    #[test]
    fn kept_key_order_does_not_change_the_hash() {
        let mut a = sample();
        a.kept = serde_json::from_str(r#"{"b": 1, "a": {"d": 2, "c": 3}}"#).unwrap();
        let mut b = sample();
        b.kept = serde_json::from_str(r#"{"a": {"c": 3, "d": 2}, "b": 1}"#).unwrap();
        assert_eq!(
            event_hash(1, GENESIS_HASH, &a).unwrap(),
            event_hash(1, GENESIS_HASH, &b).unwrap()
        );
        assert_eq!(
            canonical_json("x", &a.kept).unwrap(),
            r#"{"a":{"c":3,"d":2},"b":1}"#
        );
    }

    fn chained(n: i64) -> Vec<Event> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut event = sample();
                event.id = format!("e{seq}");
                let hash = event_hash(seq, &prev, &event).unwrap();
                let stored = Event {
                    seq,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                    event,
                };
                prev = hash;
                stored
            })
            .collect()
    }

    fn walk(anchors: Vec<(i64, String)>, events: Vec<Event>) -> VerifyReport {
        let mut walk = ChainWalk::new(anchors);
        // Two pages, to exercise state carried between them.
        let mut rows: Vec<_> = events.into_iter().map(Ok).collect();
        let second = rows.split_off(rows.len() / 2);
        walk.feed(rows).unwrap();
        walk.feed(second).unwrap();
        walk.report()
    }

    #[test]
    fn walk_accepts_an_intact_chain() {
        let report = walk(vec![], chained(5));
        assert_eq!(
            report,
            VerifyReport {
                events_checked: 5,
                first_broken: None
            }
        );
    }

    #[test]
    fn walk_reports_the_first_problem_and_stops() {
        let mut events = chained(5);
        events[1].event.effect = Some("allow".into());
        events[3].event.effect = Some("allow".into());
        let report = walk(vec![], events);
        assert_eq!(report.events_checked, 2);
        let broken = report.first_broken.unwrap();
        assert_eq!((broken.seq, broken.event_id.as_str()), (2, "e2"));
        assert_eq!(broken.problem, ChainProblem::HashMismatch);
    }

    #[test]
    fn walk_reports_a_gap_at_the_event_after_it() {
        let mut events = chained(6);
        events.drain(2..4);
        let broken = walk(vec![], events).first_broken.unwrap();
        assert_eq!(broken.seq, 5);
        assert_eq!(broken.problem, ChainProblem::Missing { from: 3, to: 4 });
        assert_eq!(broken.problem.to_string(), "events seq 3 to 4 are missing");
    }

    #[test]
    fn walk_needs_a_matching_anchor_for_a_purged_start() {
        let mut events = chained(5);
        let anchor = events[1].hash.clone();
        events.drain(..2);
        assert_eq!(
            walk(vec![(2, anchor.clone())], events.clone()).first_broken,
            None
        );
        for anchors in [vec![], vec![(1, anchor.clone())], vec![(2, "f".repeat(64))]] {
            let broken = walk(anchors, events.clone()).first_broken.unwrap();
            assert_eq!(broken.seq, 3);
            assert_eq!(
                broken.problem,
                ChainProblem::Unanchored { missing_through: 2 }
            );
        }
    }

    #[test]
    fn walk_rejects_a_first_event_not_linked_to_genesis() {
        let mut events = chained(2);
        let mut event = events[0].event.clone();
        event.id = "forged".into();
        let prev = "a".repeat(64);
        events[0] = Event {
            seq: 1,
            hash: event_hash(1, &prev, &event).unwrap(),
            prev_hash: prev,
            event,
        };
        let broken = walk(vec![], events).first_broken.unwrap();
        assert_eq!(
            (broken.seq, broken.problem),
            (1, ChainProblem::PrevHashMismatch)
        );
    }
}
