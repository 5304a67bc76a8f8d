//! Audit events as OCSF 1.3.0 "API Activity" records (class 6003), for SIEMs.
//!
//! Every event maps to the same class so one parser reads the whole export. What OCSF
//! names (who, which operation, on what, when, the outcome) goes in its standard
//! attributes; the decision's own fields, which OCSF has no place for, go unchanged in
//! `unmapped`, together with the hash chain, so an exported record can still be checked
//! against the log. The table in `docs/AUDIT.md` is the contract; keep the two in step.
//!
//! The records validate against the official OCSF 1.3.0 schema (checked in the test suite by
//! `crates/warden/tests/conformance.rs`). That rules out two things one might add: API
//! Activity takes no `security_control` profile in 1.3.0 (its `action_id` and
//! `disposition_id` arrive in 1.4.0), so the verdict is carried by `status_id`,
//! `actor.authorizations[].decision` and `unmapped.effect`; and a resource needs a `uid` or a
//! `name`, so a target with a type but no id is not a resource.

use serde_json::{Map, Value, json};
use warden_store::{Event, kind};

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// API Activity.
pub const CLASS_UID: u32 = 6003;
/// Application Activity.
pub const CATEGORY_UID: u32 = 6;

/// The OCSF record of one audit event.
pub fn to_ocsf(event: &Event) -> Value {
    let e = &event.event;
    let (activity_id, activity_name) = activity(&e.kind);
    let (status_id, status) = status(event);
    let (severity_id, severity) = severity(event);

    let mut out = Map::new();
    out.insert("class_uid".into(), json!(CLASS_UID));
    out.insert("class_name".into(), json!("API Activity"));
    out.insert("category_uid".into(), json!(CATEGORY_UID));
    out.insert("category_name".into(), json!("Application Activity"));
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(activity_name));
    out.insert(
        "type_uid".into(),
        json!(CLASS_UID * 100 + u32::from(activity_id)),
    );
    out.insert(
        "type_name".into(),
        json!(format!("API Activity: {}", activity_caption(activity_id))),
    );
    out.insert("time".into(), json!(e.time_ms));
    out.insert("severity_id".into(), json!(severity_id));
    out.insert("severity".into(), json!(severity));
    out.insert("status_id".into(), json!(status_id));
    out.insert("status".into(), json!(status));
    if !e.reasons.is_empty() {
        out.insert("message".into(), json!(e.reasons.join("; ")));
    }
    out.insert("metadata".into(), metadata(event));
    out.insert("actor".into(), actor(event));
    out.insert("api".into(), api(event));
    // Warden records no network source (it minimizes what it keeps); OCSF requires the
    // attribute, so it names the calling agent when there is one.
    out.insert(
        "src_endpoint".into(),
        json!({"name": e.agent.as_deref().unwrap_or("unknown")}),
    );
    // OCSF requires a resource to have a uid or a name; a target type alone goes to
    // `unmapped`.
    if let Some(target_id) = &e.target_id {
        let mut resource = Map::new();
        insert_some(&mut resource, "type", e.target_type.as_deref());
        resource.insert("uid".into(), json!(target_id));
        out.insert("resources".into(), json!([resource]));
    }
    out.insert("unmapped".into(), unmapped(event));
    Value::Object(out)
}

/// The activity for an event kind: the CRUD verb where one fits, else Other with the kind
/// as the source-specific name.
fn activity(event_kind: &str) -> (u8, &str) {
    match event_kind {
        kind::KEY_CREATED => (1, "Create"),
        // A revoked key is kept, marked revoked; a reloaded policy replaces the old one.
        kind::KEY_REVOKED | kind::POLICY_RELOADED | kind::PERMIT_KEYS_CHANGED => (3, "Update"),
        // A checkpoint records that the oldest events were deleted.
        kind::CHECKPOINT => (4, "Delete"),
        other => (99, other),
    }
}

fn activity_caption(activity_id: u8) -> &'static str {
    match activity_id {
        1 => "Create",
        2 => "Read",
        3 => "Update",
        4 => "Delete",
        0 => "Unknown",
        _ => "Other",
    }
}

/// A decision's verdict as reported by its effect; other events succeeded, except failed
/// authentications and failed outcomes. An outcome event also records its decision's
/// effect, but its status is the reported one: a failed run of an allowed action failed.
fn status(event: &Event) -> (u8, &'static str) {
    let e = &event.event;
    match e.kind.as_str() {
        kind::DECISION => match e.effect.as_deref() {
            Some("allow") => (1, "Success"),
            Some("deny") => (2, "Failure"),
            Some("require_approval") => (99, "require_approval"),
            _ => (0, "Unknown"),
        },
        kind::AUTH_FAILURE => (2, "Failure"),
        kind::OUTCOME if e.detail.get("status") == Some(&json!("failed")) => (2, "Failure"),
        _ => (1, "Success"),
    }
}

/// Denials, failed authentications and flagged proposals deserve a look; pending approvals a
/// glance.
fn severity(event: &Event) -> (u8, &'static str) {
    let e = &event.event;
    match e.kind.as_str() {
        kind::DECISION => match e.effect.as_deref() {
            Some("deny") => (3, "Medium"),
            Some("require_approval") => (2, "Low"),
            _ => (1, "Informational"),
        },
        kind::AUTH_FAILURE | kind::PROPOSAL_SECURITY_EVENT => (3, "Medium"),
        _ => (1, "Informational"),
    }
}

fn metadata(event: &Event) -> Value {
    let e = &event.event;
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert(
        "product".into(),
        json!({
            "name": "Warden",
            "vendor_name": "Warden",
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );
    metadata.insert("uid".into(), json!(e.id));
    metadata.insert("tenant_uid".into(), json!(e.tenant));
    metadata.insert("sequence".into(), json!(event.seq));
    metadata.insert("event_code".into(), json!(e.kind));
    metadata.insert("log_name".into(), json!("audit"));
    insert_some(&mut metadata, "correlation_uid", e.decision_id.as_deref());
    Value::Object(metadata)
}

/// The agent as the acting user; without one, what the event says invoked it (the CLI,
/// the server).
fn actor(event: &Event) -> Value {
    let e = &event.event;
    let mut actor = Map::new();
    if let Some(agent) = &e.agent {
        actor.insert(
            "user".into(),
            json!({"uid": agent, "type_id": 99, "type": "agent"}),
        );
    } else {
        let by = e
            .detail
            .get("by")
            .and_then(Value::as_str)
            .unwrap_or("warden");
        actor.insert("invoked_by".into(), json!(by));
    }
    if let Some(effect) = &e.effect {
        let mut policy = Map::new();
        policy.insert("name".into(), json!("warden"));
        policy.insert("uid".into(), json!(e.tenant));
        insert_some(&mut policy, "version", e.policy_version.as_deref());
        actor.insert(
            "authorizations".into(),
            json!([{"decision": effect, "policy": policy}]),
        );
    }
    Value::Object(actor)
}

/// The agent's action type is the operation; events without one name their kind.
fn api(event: &Event) -> Value {
    let e = &event.event;
    let mut api = Map::new();
    api.insert(
        "operation".into(),
        json!(e.action_type.as_deref().unwrap_or(&e.kind)),
    );
    if let Some(decision_id) = &e.decision_id {
        api.insert("request".into(), json!({"uid": decision_id}));
    }
    Value::Object(api)
}

/// The Warden fields OCSF has no attribute for, under their Warden names.
fn unmapped(event: &Event) -> Value {
    let e = &event.event;
    let mut unmapped = Map::new();
    insert_some(&mut unmapped, "effect", e.effect.as_deref());
    if e.target_id.is_none() {
        insert_some(&mut unmapped, "target_type", e.target_type.as_deref());
    }
    unmapped.insert("rule_ids".into(), json!(e.rule_ids));
    unmapped.insert("reasons".into(), json!(e.reasons));
    insert_some(&mut unmapped, "policy_version", e.policy_version.as_deref());
    insert_some(&mut unmapped, "policy_hash", e.policy_hash.as_deref());
    if let Some(c) = e.confidence_initial {
        unmapped.insert("confidence_initial".into(), json!(c));
    }
    if let Some(c) = e.confidence_adjusted {
        unmapped.insert("confidence_adjusted".into(), json!(c));
    }
    insert_some(&mut unmapped, "mode", e.mode.as_deref());
    insert_some(&mut unmapped, "on_behalf_of", e.on_behalf_of.as_deref());
    insert_some(&mut unmapped, "payload_digest", e.payload_digest.as_deref());
    insert_some(&mut unmapped, "context_digest", e.context_digest.as_deref());
    if !e.kept.is_null() {
        unmapped.insert("kept".into(), e.kept.clone());
    }
    if !e.detail.is_null() {
        unmapped.insert("detail".into(), e.detail.clone());
    }
    unmapped.insert("prev_hash".into(), json!(event.prev_hash));
    unmapped.insert("hash".into(), json!(event.hash));
    Value::Object(unmapped)
}

/// OCSF omits absent attributes rather than writing null.
fn insert_some(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), json!(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_store::NewEvent;

    fn stored(event: NewEvent) -> Event {
        Event {
            seq: 42,
            prev_hash: "aa".repeat(32),
            hash: "bb".repeat(32),
            event,
        }
    }

    fn decision(effect: &str) -> Event {
        stored(NewEvent {
            id: "01JD8Z9R6W3K2Q5N7X4T0M1B8C".into(),
            time_ms: 1_700_000_000_123,
            tenant: "acme".into(),
            kind: kind::DECISION.into(),
            agent: Some("support-bot".into()),
            on_behalf_of: Some("user-991".into()),
            action_type: Some("ticket.resolve".into()),
            target_type: Some("ticket".into()),
            target_id: Some("T-1042".into()),
            mode: Some("auto".into()),
            confidence_initial: Some(0.82),
            confidence_adjusted: Some(0.72),
            effect: Some(effect.into()),
            rule_ids: vec!["low-confidence-resolve".into()],
            reasons: vec!["confidence 0.82 is below 0.85".into()],
            policy_version: Some("1.0.0".into()),
            policy_hash: Some("ef".repeat(32)),
            payload_digest: Some("ab".repeat(32)),
            context_digest: Some("cd".repeat(32)),
            kept: json!({"action": {"target": {"id": "T-1042"}}}),
            decision_id: Some("d-1".into()),
            detail: Value::Null,
        })
    }

    #[test]
    fn a_decision_maps_to_api_activity_other_with_the_decision_in_unmapped() {
        let o = to_ocsf(&decision("deny"));
        assert_eq!(o["class_uid"], 6003);
        assert_eq!(o["category_uid"], 6);
        assert_eq!(o["activity_id"], 99);
        assert_eq!(o["activity_name"], "decision");
        assert_eq!(o["type_uid"], 600_399);
        assert_eq!(o["time"], 1_700_000_000_123_i64);
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["status"], "Failure");
        assert_eq!(o["severity_id"], 3);
        assert_eq!(o["message"], "confidence 0.82 is below 0.85");
        // Not in OCSF 1.3.0's API Activity: the security_control profile's attributes.
        for absent in ["action_id", "action", "disposition_id", "disposition"] {
            assert!(o.get(absent).is_none(), "{absent}");
        }

        let m = &o["metadata"];
        assert_eq!(m["version"], "1.3.0");
        assert_eq!(m["product"]["name"], "Warden");
        assert_eq!(m["product"]["vendor_name"], "Warden");
        assert_eq!(m["product"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(m["uid"], "01JD8Z9R6W3K2Q5N7X4T0M1B8C");
        assert_eq!(m["tenant_uid"], "acme");
        assert_eq!(m["sequence"], 42);
        assert_eq!(m["correlation_uid"], "d-1");
        assert_eq!(m["event_code"], "decision");
        assert!(m.get("profiles").is_none());

        assert_eq!(o["actor"]["user"]["uid"], "support-bot");
        assert_eq!(o["actor"]["authorizations"][0]["decision"], "deny");
        assert_eq!(
            o["actor"]["authorizations"][0]["policy"]["version"],
            "1.0.0"
        );
        assert_eq!(o["api"]["operation"], "ticket.resolve");
        assert_eq!(o["api"]["request"]["uid"], "d-1");
        assert_eq!(o["src_endpoint"]["name"], "support-bot");
        assert_eq!(o["resources"], json!([{"type": "ticket", "uid": "T-1042"}]));

        let u = &o["unmapped"];
        assert_eq!(u["effect"], "deny");
        assert_eq!(u["rule_ids"], json!(["low-confidence-resolve"]));
        assert_eq!(u["reasons"], json!(["confidence 0.82 is below 0.85"]));
        assert_eq!(u["policy_version"], "1.0.0");
        assert_eq!(u["policy_hash"], "ef".repeat(32));
        assert_eq!(u["confidence_initial"], 0.82);
        assert_eq!(u["confidence_adjusted"], 0.72);
        assert_eq!(u["mode"], "auto");
        assert_eq!(u["on_behalf_of"], "user-991");
        assert_eq!(u["payload_digest"], "ab".repeat(32));
        assert_eq!(u["context_digest"], "cd".repeat(32));
        assert_eq!(u["kept"], json!({"action": {"target": {"id": "T-1042"}}}));
        assert_eq!(u["prev_hash"], "aa".repeat(32));
        assert_eq!(u["hash"], "bb".repeat(32));
        assert!(u.get("detail").is_none(), "null fields are omitted");
    }

    #[test]
    fn effects_map_to_status_and_severity() {
        // (effect, status_id, status, severity_id)
        let cases = [
            ("allow", 1, "Success", 1),
            ("deny", 2, "Failure", 3),
            ("require_approval", 99, "require_approval", 2),
        ];
        for (effect, status_id, status, severity_id) in cases {
            let o = to_ocsf(&decision(effect));
            assert_eq!(o["status_id"], status_id, "{effect}");
            assert_eq!(o["status"], status, "{effect}");
            assert_eq!(o["severity_id"], severity_id, "{effect}");
            assert_eq!(o["actor"]["authorizations"][0]["decision"], effect);
            assert_eq!(o["unmapped"]["effect"], effect);
        }
    }

    #[test]
    fn a_target_without_an_id_is_not_a_resource() {
        let mut event = decision("allow");
        event.event.target_id = None;
        let o = to_ocsf(&event);
        assert!(o.get("resources").is_none(), "{o}");
        assert_eq!(o["unmapped"]["target_type"], "ticket");
        assert!(
            to_ocsf(&decision("allow"))["unmapped"]
                .get("target_type")
                .is_none()
        );
    }

    #[test]
    fn kinds_pick_the_closest_activity() {
        let cases = [
            (kind::KEY_CREATED, 1, "Create"),
            (kind::KEY_REVOKED, 3, "Update"),
            (kind::POLICY_RELOADED, 3, "Update"),
            (kind::PERMIT_KEYS_CHANGED, 3, "Update"),
            (kind::CHECKPOINT, 4, "Delete"),
            (kind::OUTCOME, 99, "outcome"),
            (kind::AUTH_FAILURE, 99, "auth_failure"),
        ];
        for (kind, activity_id, name) in cases {
            let o = to_ocsf(&stored(NewEvent {
                id: "e".into(),
                tenant: "acme".into(),
                kind: kind.into(),
                ..NewEvent::default()
            }));
            assert_eq!(o["activity_id"], activity_id, "{kind}");
            assert_eq!(o["activity_name"], name, "{kind}");
            assert_eq!(o["type_uid"], 600_300 + activity_id, "{kind}");
            assert!(o.get("action_id").is_none(), "{kind}: not a decision");
        }
    }

    #[test]
    fn an_event_without_an_agent_names_what_invoked_it() {
        let o = to_ocsf(&stored(NewEvent {
            id: "e".into(),
            time_ms: 5,
            tenant: "acme".into(),
            kind: kind::KEY_CREATED.into(),
            detail: json!({"key_id": "k1", "by": "cli"}),
            ..NewEvent::default()
        }));
        assert_eq!(o["actor"], json!({"invoked_by": "cli"}));
        assert_eq!(o["api"]["operation"], "key_created");
        assert_eq!(o["status_id"], 1);
        assert_eq!(o["severity_id"], 1);
        assert_eq!(o["src_endpoint"]["name"], "unknown");
        assert!(o.get("resources").is_none());
        assert!(o["metadata"].get("correlation_uid").is_none());
        assert_eq!(o["unmapped"]["detail"]["key_id"], "k1");
    }

    #[test]
    fn failed_authentications_and_outcomes_are_failures() {
        let failure = |kind: &str, detail: Value| {
            to_ocsf(&stored(NewEvent {
                id: "e".into(),
                tenant: "acme".into(),
                kind: kind.into(),
                detail,
                ..NewEvent::default()
            }))
        };
        assert_eq!(failure(kind::AUTH_FAILURE, Value::Null)["status_id"], 2);
        assert_eq!(failure(kind::AUTH_FAILURE, Value::Null)["severity_id"], 3);
        assert_eq!(
            failure(kind::OUTCOME, json!({"status": "failed"}))["status_id"],
            2
        );
        assert_eq!(
            failure(kind::OUTCOME, json!({"status": "executed"}))["status_id"],
            1
        );
        // An outcome records its decision's effect; the reported status still decides.
        let mut outcome = decision("allow");
        outcome.event.kind = kind::OUTCOME.into();
        outcome.event.detail = json!({"status": "failed"});
        let o = to_ocsf(&outcome);
        assert_eq!(o["status_id"], 2, "{o}");
        assert_eq!(o["severity_id"], 1, "{o}");
    }
}
