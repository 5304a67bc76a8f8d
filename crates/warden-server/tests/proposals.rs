//! Agent-proposed policy changes through the router (`oneshot`), on a SQLite file, SQLite in
//! memory and, when `WARDEN_TEST_DATABASE_URL` is set, PostgreSQL in a schema of its own —
//! including two replicas on one database: what the agent and the approver see, the rows
//! in `audit_events`, and the version live on the other replica.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers, not shipped code

use axum::Router;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_server::keys::{self, KeySpec, Role};
use warden_server::reviewer::Reviewers;
use warden_server::{AppState, Limits};
use warden_store::{Event, EventFilter, Store, kind};

mod common;
use common::{Place, places};

/// `acme` takes proposals; `globex` too (another tenant); `initech` has them off.
const ACME: &str = r#"
version: 1.0.0
default: deny
proposals: on
rules:
  - id: read-tickets
    actions: [ticket.read]
    effect: allow
  - id: close-tickets
    actions: [ticket.close]
    effect: allow
"#;

const INITECH: &str = r#"
version: 1.0.0
default: deny
rules:
  - id: read-tickets
    actions: [ticket.read]
    effect: allow
"#;

/// One replica: a router over its own store, following the store's policies.
struct Server {
    app: Router,
    store: Arc<dyn Store>,
    state: AppState,
    _policies: tempfile::TempDir,
}

fn limits() -> Limits {
    Limits {
        key_cache_ttl: Duration::ZERO,
        policy_poll: Duration::from_millis(50),
        ..Limits::default()
    }
}

async fn server(place: &Place) -> Server {
    server_with(place, limits()).await
}

async fn server_with(place: &Place, limits: Limits) -> Server {
    server_reviewed(place, limits, Reviewers::default()).await
}

async fn server_reviewed(place: &Place, limits: Limits, reviewers: Reviewers) -> Server {
    let policies = [("acme", ACME), ("globex", ACME), ("initech", INITECH)];
    let r = common::replica(place, &policies, limits, |s| s.with_reviewers(reviewers)).await;
    Server {
        app: r.app,
        store: r.store,
        state: r.state,
        _policies: r.policies,
    }
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        common::call(&self.app, method, path, token, body).await
    }

    async fn key(&self, spec: KeySpec) -> String {
        keys::create(self.store.as_ref(), spec, "test", 1)
            .await
            .unwrap()
            .0
            .token
    }

    async fn agent(&self, tenant: &str, agent: &str) -> String {
        self.key(KeySpec {
            tenant: tenant.into(),
            roles: vec![Role::Agent],
            agent: Some(agent.into()),
            ..KeySpec::default()
        })
        .await
    }

    async fn approver(&self, tenant: &str, user: &str) -> String {
        self.key(KeySpec {
            tenant: tenant.into(),
            roles: vec![Role::Approver],
            user: Some(user.into()),
            groups: vec!["policy".into()],
            ..KeySpec::default()
        })
        .await
    }

    async fn role(&self, tenant: &str, role: Role) -> String {
        self.key(KeySpec {
            tenant: tenant.into(),
            // A controller names the agent it asks for; only a pattern lets it.
            agent: (role == Role::Controller).then(|| "*".to_owned()),
            roles: vec![role],
            ..KeySpec::default()
        })
        .await
    }

    async fn events(&self, kind: &str) -> Vec<Event> {
        self.store
            .events(&EventFilter {
                kind: Some(kind.to_owned()),
                limit: 1000,
                ..EventFilter::default()
            })
            .await
            .unwrap()
    }

    /// The revision of `tenant`'s policy in force on this replica.
    fn revision(&self, tenant: &str) -> i64 {
        self.state
            .policies()
            .current()
            .own(tenant)
            .map_or(0, |p| p.revision)
    }

    async fn propose(&self, agent: &str, proposal: Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/v1/proposals", agent, proposal)
            .await
    }

    async fn decide(&self, controller: &str, action: Value) -> Value {
        let (status, body) = self
            .call(Method::POST, "/v1/decisions", controller, action)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// A rule denying one action type: narrowing.
fn deny_close() -> Value {
    json!({
        "rationale": "closing tickets should go through a human for now",
        "risks": ["tickets stay open longer"],
        "confidence": 0.9,
        "changes": [{"op": "add_rule", "rule": {
            "id": "no-close", "actions": ["ticket.close"], "effect": "deny",
            "reason": "tickets are closed by people"
        }}]
    })
}

/// An allow for an action the default denies: broadening.
fn allow_export(id: &str) -> Value {
    json!({
        "rationale": "support-bot must export the CRM account it works on",
        "risks": ["exports of customer data"],
        "confidence": 0.8,
        "changes": [{"op": "add_rule", "rule": {
            "id": id, "actions": ["crm.export"], "agents": ["support-bot"], "effect": "allow"
        }}]
    })
}

/// Waits (at most 10 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Needs the prover: a deny for one action type is narrowing; with no findings and no other
/// agent's decision flipping it is applied at once, as a new version that the other replica
/// follows.
#[tokio::test]
async fn a_narrowing_proposal_is_auto_approved_and_live_on_a_second_replica() {
    for place in places("prop").await {
        let a = server(&place).await;
        let b = server(&place).await;
        let agent = a.agent("acme", "support-bot").await;
        let controller = b.role("acme", Role::Controller).await;
        let (status, body) = a.propose(&agent, deny_close()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "auto_approved", "{body}");
        assert_eq!(body["classification"], "narrowing", "{body}");
        assert_eq!(body["version"], "1.0.1", "{body}");
        assert_eq!(body["revision"], 2, "{body}");
        assert_eq!(body["findings"], json!([]));
        assert_eq!(body["diff"]["rules_added"][0]["id"], "no-close", "{body}");
        assert!(
            body.get("candidate_source").is_none(),
            "an agent sees no whole document"
        );
        let id = body["id"].as_str().unwrap().to_owned();

        // Live on the other replica: it decides with revision 2.
        eventually("replica b follows revision 2", || b.revision("acme") == 2).await;
        let decision = b
            .decide(
                &controller,
                json!({"type": "ticket.close", "agent": "support-bot"}),
            )
            .await;
        assert_eq!(decision["effect"], "deny", "{decision}");

        // Audited in one transaction: the submission, then the publish naming it.
        let submitted = a.events(kind::PROPOSAL_SUBMITTED).await;
        assert_eq!(submitted.len(), 1);
        let e = &submitted[0];
        assert_eq!(e.event.agent.as_deref(), Some("support-bot"));
        assert_eq!(e.event.detail["proposal_id"], id);
        assert_eq!(e.event.detail["status"], "auto_approved");
        assert_eq!(e.event.detail["classification"], "narrowing");
        assert_eq!(e.event.detail["findings"], 0);
        assert!(
            !e.event
                .detail
                .to_string()
                .contains("tickets are closed by people")
        );
        let published: Vec<_> = a
            .events(kind::POLICY_PUBLISHED)
            .await
            .into_iter()
            .filter(|p| p.event.detail["cause"] == "proposal")
            .collect();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].event.detail["proposal_id"], id);
        assert_eq!(published[0].event.detail["revision"], 2);
        assert_eq!(
            published[0].seq,
            e.seq + 1,
            "the same transaction, in order"
        );
    }
}

/// A review replays every recent decision: on a replica that holds the earlier ones
/// decoded from the last review, also those made since; on another, all of them.
#[tokio::test]
async fn each_review_replays_the_decisions_made_since_the_last() {
    for place in places("prop").await {
        let a = server(&place).await;
        let b = server(&place).await;
        let agent = a.agent("acme", "support-bot").await;
        let controller = a.role("acme", Role::Controller).await;
        let read = json!({"type": "ticket.read", "agent": "support-bot"});
        for _ in 0..2 {
            a.decide(&controller, read.clone()).await;
        }
        let (_, first) = a.propose(&agent, allow_export("first")).await;
        assert_eq!(first["impact"]["replayed"], 2, "{first}");
        for _ in 0..3 {
            a.decide(&controller, read.clone()).await;
        }
        let (_, second) = a.propose(&agent, allow_export("second")).await;
        assert_eq!(second["impact"]["replayed"], 5, "{second}");
        let (_, other) = b.propose(&agent, allow_export("third")).await;
        assert_eq!(other["impact"]["replayed"], 5, "{other}");
        let (_, again) = a.propose(&agent, allow_export("fourth")).await;
        assert_eq!(
            again["impact"]["replayed"], 5,
            "nothing counted twice: {again}"
        );
    }
}

/// Undoing a version that went live in the last day is drift: rejected and flagged, on a
/// replica that never saw the replaced version's document, however the revert is spelled.
#[tokio::test]
async fn reverting_a_version_replaced_today_is_rejected_on_any_replica() {
    for place in places("prop").await {
        let a = server(&place).await;
        let b = server(&place).await;
        let agent = a.agent("acme", "support-bot").await;
        let (_, body) = a.propose(&agent, deny_close()).await;
        assert_eq!(body["status"], "auto_approved", "{body}");
        eventually("replica b follows revision 2", || b.revision("acme") == 2).await;

        let removal = json!({
            "rationale": "closing works again",
            "risks": ["tickets close without a human"],
            "changes": [{"op": "remove_rule", "id": "no-close"}],
        });
        let patch = json!({
            "rationale": "closing works again, patched",
            "risks": ["tickets close without a human"],
            "changes": [{"op": "json_patch", "patch": [{"op": "remove", "path": "/rules/2"}]}],
        });
        for (n, proposal) in [removal, patch].into_iter().enumerate() {
            let (status, body) = b.propose(&agent, proposal).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["status"], "rejected", "revert {n}: {body}");
            assert!(
                body["security_event"]
                    .as_str()
                    .is_some_and(|e| e.contains("reverts a policy version")),
                "revert {n}: {body}"
            );
        }
        assert_eq!(b.events(kind::PROPOSAL_SECURITY_EVENT).await.len(), 2);
        assert_eq!(b.revision("acme"), 2, "nothing was published");
    }
}

/// An allow for an action the default denies waits for a human, who sees the diff and
/// approves with the analysis's token; a wrong token and a replay are refused.
#[tokio::test]
async fn a_broadening_proposal_needs_a_human_who_approves_it_with_its_token() {
    for place in places("prop").await {
        let a = server(&place).await;
        let b = server(&place).await;
        let agent = a.agent("acme", "support-bot").await;
        let alice = a.approver("acme", "alice").await;
        let controller = b.role("acme", Role::Controller).await;
        let (status, body) = a.propose(&agent, allow_export("allow-export")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "needs_human", "{body}");
        assert_eq!(body["classification"], "broadening", "{body}");
        assert!(body.get("version").is_none());
        let id = body["id"].as_str().unwrap().to_owned();
        let token = body["review_token"].as_str().unwrap().to_owned();
        assert_eq!(token.len(), 64);

        // The approver sees the same analysis, with the whole candidate.
        let (status, shown) = a
            .call(
                Method::GET,
                &format!("/v1/proposals/{id}"),
                &alice,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["review_token"], token);
        assert_eq!(shown["diff"]["rules_added"][0]["id"], "allow-export");
        assert!(
            shown["candidate_source"]
                .as_str()
                .unwrap()
                .contains("allow-export")
        );
        assert_eq!(
            shown["proposal"]["rationale"],
            allow_export("x")["rationale"]
        );

        let approve = format!("/v1/proposals/{id}/approve");
        let (status, wrong) = a
            .call(
                Method::POST,
                &approve,
                &alice,
                json!({"review_token": "0".repeat(64)}),
            )
            .await;
        assert_eq!(
            (status, wrong["error"].as_str()),
            (StatusCode::CONFLICT, Some("review_token_mismatch")),
            "{wrong}"
        );
        let (status, approved) = a
            .call(
                Method::POST,
                &approve,
                &alice,
                json!({"review_token": token}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{approved}");
        assert_eq!(approved["status"], "approved");
        assert_eq!(approved["decided_by"], "alice");
        assert_eq!(approved["version"], "1.0.1");
        let (status, again) = a
            .call(
                Method::POST,
                &approve,
                &alice,
                json!({"review_token": token}),
            )
            .await;
        assert_eq!(
            (status, again["error"].as_str()),
            (StatusCode::CONFLICT, Some("already_decided")),
            "{again}"
        );

        // The other replica allows what was approved.
        eventually("replica b follows revision 2", || b.revision("acme") == 2).await;
        let decision = b
            .decide(
                &controller,
                json!({"type": "crm.export", "agent": "support-bot"}),
            )
            .await;
        assert_eq!(decision["effect"], "allow", "{decision}");

        let decided = a.events(kind::PROPOSAL_DECIDED).await;
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].event.detail["decision"], "approved");
        assert_eq!(decided[0].event.detail["by"], "alice");
        let published: Vec<_> = a
            .events(kind::POLICY_PUBLISHED)
            .await
            .into_iter()
            .filter(|p| p.event.detail["cause"] == "proposal")
            .collect();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].event.detail["proposal_id"], id);
        assert_eq!(published[0].seq, decided[0].seq + 1, "one transaction");
    }
}

/// Needs the prover: a broadening verdict comes with a counterexample action.
#[tokio::test]
async fn a_broadening_proposal_shows_an_action_it_would_let_through() {
    let place = places("prop").await.remove(0);
    let s = server(&place).await;
    let agent = s.agent("acme", "support-bot").await;
    let (status, body) = s.propose(&agent, allow_export("allow-export")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let example = &body["counterexamples"][0];
    assert_eq!(example["action"]["type"], "crm.export", "{body}");
    assert_eq!(example["live"]["effect"], "deny");
    assert_eq!(example["candidate"]["effect"], "allow");
    assert_eq!(example["candidate"]["rules"], json!(["allow-export"]));
}

/// Needs the prover's pass over forbidden changes: `default: allow` over a deny default.
#[tokio::test]
async fn setting_default_allow_is_rejected_as_forbidden() {
    let place = places("prop").await.remove(0);
    let s = server(&place).await;
    let agent = s.agent("acme", "support-bot").await;
    let (status, body) = s
        .propose(
            &agent,
            json!({"rationale": "fewer denials", "risks": ["everything runs"],
                   "changes": [{"op": "set", "path": "default", "value": "allow"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "rejected", "{body}");
    assert_eq!(body["classification"], "forbidden", "{body}");
    assert_eq!(body["decided_by"], "review");
    assert_eq!(s.revision("acme"), 1, "nothing applied");
}

/// Two approvers on two replicas approve at once: one applies it, the other is told it is
/// decided; one version is published.
#[tokio::test]
async fn two_approvers_racing_on_two_replicas_apply_a_proposal_once() {
    for place in places("prop").await {
        let a = server(&place).await;
        let b = server(&place).await;
        let agent = a.agent("acme", "support-bot").await;
        let alice = a.approver("acme", "alice").await;
        let bob = a.approver("acme", "bob").await;
        let (_, body) = a.propose(&agent, allow_export("allow-export")).await;
        assert_eq!(body["status"], "needs_human", "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        let approve = format!("/v1/proposals/{id}/approve");
        let token = json!({"review_token": body["review_token"]});
        let (one, two) = tokio::join!(
            a.call(Method::POST, &approve, &alice, token.clone()),
            b.call(Method::POST, &approve, &bob, token.clone()),
        );
        let mut statuses = [one.0, two.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "{one:?} {two:?}"
        );
        let loser = if one.0 == StatusCode::CONFLICT {
            &one.1
        } else {
            &two.1
        };
        assert!(
            ["already_decided", "policy_changed"].contains(&loser["error"].as_str().unwrap()),
            "{loser}"
        );
        let versions = a.store.policy_versions("acme", None, 10).await.unwrap();
        assert_eq!(versions.len(), 2, "one publish: {versions:?}");
        assert_eq!(a.events(kind::PROPOSAL_DECIDED).await.len(), 1);
    }
}

/// The live policy changed after the analysis an approver saw: the proposal is analyzed
/// again, the approver gets the new token, and approving with it applies.
#[tokio::test]
async fn approving_after_the_policy_changed_answers_the_new_analysis() {
    for place in places("prop").await {
        let s = server(&place).await;
        let agent = s.agent("acme", "support-bot").await;
        let alice = s.approver("acme", "alice").await;
        let admin = s.role("acme", Role::Admin).await;
        let (_, body) = s.propose(&agent, allow_export("allow-export")).await;
        let id = body["id"].as_str().unwrap().to_owned();
        let old = body["review_token"].as_str().unwrap().to_owned();
        let newer = ACME.replace("version: 1.0.0", "version: 1.1.0")
            + "  - id: read-accounts\n    actions: [crm.read]\n    effect: allow\n";
        let (status, published) = common::call_as(
            &s.app,
            Method::POST,
            "/v1/policy",
            &admin,
            "application/yaml",
            newer,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{published}");

        let approve = format!("/v1/proposals/{id}/approve");
        let (status, changed) = s
            .call(Method::POST, &approve, &alice, json!({"review_token": old}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{changed}");
        assert_eq!(changed["error"], "policy_changed");
        assert!(changed["detail"].as_str().is_some());
        let fresh = changed["proposal"]["review_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(fresh, old);
        assert_eq!(changed["proposal"]["status"], "needs_human");
        assert_eq!(changed["proposal"]["candidate_version"], "1.1.1");
        // The stored proposal shows the new analysis.
        let (_, shown) = s
            .call(
                Method::GET,
                &format!("/v1/proposals/{id}"),
                &alice,
                Value::Null,
            )
            .await;
        assert_eq!(shown["review_token"], fresh);

        let (status, approved) = s
            .call(
                Method::POST,
                &approve,
                &alice,
                json!({"review_token": fresh}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{approved}");
        assert_eq!(approved["version"], "1.1.1");
        assert_eq!(s.revision("acme"), 3);
    }
}

/// A rejection needs a reason, which the agent then reads; the agent can never decide its
/// own proposal.
#[tokio::test]
async fn a_rejection_carries_its_reason_to_the_agent() {
    for place in places("prop").await {
        let s = server(&place).await;
        let agent = s.agent("acme", "support-bot").await;
        let alice = s.approver("acme", "alice").await;
        let itself = s.approver("acme", "support-bot").await;
        let (_, body) = s.propose(&agent, allow_export("allow-export")).await;
        let id = body["id"].as_str().unwrap().to_owned();
        let reject = format!("/v1/proposals/{id}/reject");

        for (token, action, request) in [
            (&itself, "reject", json!({"reason": "mine"})),
            (
                &itself,
                "approve",
                json!({"review_token": body["review_token"]}),
            ),
            (&agent, "reject", json!({"reason": "mine"})),
        ] {
            let path = format!("/v1/proposals/{id}/{action}");
            let (status, refused) = s.call(Method::POST, &path, token, request).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {refused}");
        }
        for bad in [
            json!({}),
            json!({"reason": ""}),
            json!({"reason": "a\u{1b}[2Jb"}),
            json!({"reason": "x".repeat(2001)}),
            json!({"reason": "ok", "extra": 1}),
        ] {
            let (status, refused) = s.call(Method::POST, &reject, &alice, bad.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {refused}");
        }
        let (status, rejected) = s
            .call(
                Method::POST,
                &reject,
                &alice,
                json!({"reason": "exports need the DPO's sign-off"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{rejected}");
        let (status, seen) = s
            .call(
                Method::GET,
                &format!("/v1/proposals/{id}"),
                &agent,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{seen}");
        assert_eq!(seen["status"], "rejected");
        assert_eq!(seen["reason"], "exports need the DPO's sign-off");
        assert_eq!(seen["decided_by"], "alice");
        let decided = s.events(kind::PROPOSAL_DECIDED).await;
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].event.detail["decision"], "rejected");
        assert_eq!(
            decided[0].event.detail["reason"],
            "exports need the DPO's sign-off"
        );

        // Submitting the very change again, with no new evidence, is refused and flagged.
        let (status, again) = s.propose(&agent, allow_export("allow-export")).await;
        assert_eq!(status, StatusCode::CREATED, "{again}");
        assert_eq!(again["status"], "rejected", "{again}");
        assert!(again["security_event"].as_str().is_some(), "{again}");
        let flagged = s.events(kind::PROPOSAL_SECURITY_EVENT).await;
        assert_eq!(flagged.len(), 1);
        assert_eq!(flagged[0].event.agent.as_deref(), Some("support-bot"));
        assert_eq!(flagged[0].event.detail["proposal_id"], again["id"]);
        assert!(flagged[0].event.detail["key_id"].as_str().is_some());
    }
}

/// A newer proposal of the same agent about the same action replaces its older pending one.
#[tokio::test]
async fn a_newer_proposal_about_the_same_action_supersedes_the_pending_one() {
    for place in places("prop").await {
        let s = server(&place).await;
        let agent = s.agent("acme", "support-bot").await;
        let alice = s.approver("acme", "alice").await;
        let (_, first) = s.propose(&agent, allow_export("allow-export")).await;
        let (_, second) = s.propose(&agent, allow_export("allow-export-narrow")).await;
        assert_eq!(first["subject"], second["subject"]);
        let (first, second) = (
            first["id"].as_str().unwrap(),
            second["id"].as_str().unwrap(),
        );
        let (_, old) = s
            .call(
                Method::GET,
                &format!("/v1/proposals/{first}"),
                &agent,
                Value::Null,
            )
            .await;
        assert_eq!(old["status"], "superseded", "{old}");
        assert_eq!(old["superseded_by"], second);
        let events = s.events(kind::PROPOSAL_SUPERSEDED).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.detail["proposal_id"], first);
        assert_eq!(events[0].event.detail["superseded_by"], second);
        // A superseded proposal cannot be approved.
        let (status, refused) = s
            .call(
                Method::POST,
                &format!("/v1/proposals/{first}/approve"),
                &alice,
                json!({"review_token": old["review_token"]}),
            )
            .await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (StatusCode::CONFLICT, Some("already_decided"))
        );
        let (_, pending) = s
            .call(
                Method::GET,
                "/v1/proposals?status=needs_human",
                &alice,
                Value::Null,
            )
            .await;
        let ids: Vec<&str> = pending["proposals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [second]);
    }
}

/// An agent sees only its own agent's proposals; another tenant's id is not found; a
/// tenant with proposals off answers 404 `feature_disabled`; a revoked key nothing.
#[tokio::test]
async fn proposals_are_seen_only_by_their_tenant_and_agent() {
    for place in places("prop").await {
        let s = server(&place).await;
        let agent = s.agent("acme", "support-bot").await;
        let other = s.agent("acme", "billing-bot").await;
        let alice = s.approver("acme", "alice").await;
        let admin = s.role("acme", Role::Admin).await;
        let globex = s.approver("globex", "gina").await;
        let initech = s.agent("initech", "support-bot").await;
        let (_, body) = s.propose(&agent, allow_export("allow-export")).await;
        let id = body["id"].as_str().unwrap().to_owned();
        let show = format!("/v1/proposals/{id}");

        let (status, _) = s.call(Method::GET, &show, &other, Value::Null).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another agent's");
        let (_, listed) = s
            .call(Method::GET, "/v1/proposals", &other, Value::Null)
            .await;
        assert_eq!(listed["proposals"], json!([]), "{listed}");
        let (_, listed) = s
            .call(Method::GET, "/v1/proposals", &agent, Value::Null)
            .await;
        assert_eq!(listed["proposals"][0]["id"], id, "{listed}");
        let (status, _) = s.call(Method::GET, &show, &admin, Value::Null).await;
        assert_eq!(status, StatusCode::OK);

        for (path, method, request) in [
            (show.clone(), Method::GET, Value::Null),
            (format!("{show}/wait?timeout=1"), Method::GET, Value::Null),
            (
                format!("{show}/reject"),
                Method::POST,
                json!({"reason": "no"}),
            ),
            (
                format!("{show}/approve"),
                Method::POST,
                json!({"review_token": body["review_token"]}),
            ),
        ] {
            let (status, refused) = s.call(method, &path, &globex, request).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {refused}");
            assert_eq!(refused["error"], "not_found");
        }
        let (_, theirs) = s
            .call(Method::GET, "/v1/proposals", &globex, Value::Null)
            .await;
        assert_eq!(theirs["proposals"], json!([]));

        let (status, off) = s.propose(&initech, allow_export("allow-export")).await;
        assert_eq!(
            (status, off["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("feature_disabled")),
            "{off}"
        );
        let (status, off) = s
            .call(Method::GET, "/v1/proposals", &initech, Value::Null)
            .await;
        assert_eq!(
            (status, off["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("feature_disabled"))
        );

        // Only agent keys submit.
        let (status, _) = s.propose(&alice, allow_export("allow-export")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let key_id = agent.split('_').nth(1).unwrap();
        assert!(s.store.revoke_key(key_id, 1).await.unwrap());
        let (status, _) = s.call(Method::GET, &show, &agent, Value::Null).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = s.propose(&agent, deny_close()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

/// Ten proposals an hour per agent, counted in the store: the eleventh is 429, on either
/// replica; another agent is not affected.
#[tokio::test]
async fn an_agent_may_submit_ten_proposals_an_hour() {
    for place in places("prop").await {
        let a = server(&place).await;
        let b = server(&place).await;
        let agent = a.agent("acme", "support-bot").await;
        let other = a.agent("acme", "billing-bot").await;
        for i in 0..10 {
            let s = if i % 2 == 0 { &a } else { &b };
            let (status, body) = s
                .propose(&agent, allow_export(&format!("allow-export-{i}")))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{i}: {body}");
        }
        for s in [&a, &b] {
            let (status, body) = s.propose(&agent, allow_export("allow-export-x")).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(body["error"], "rate_limited");
        }
        let (status, body) = a.propose(&other, allow_export("allow-export-y")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// What is not a proposal is refused, naming the field, before anything is reviewed.
#[tokio::test]
async fn malformed_proposals_are_refused_with_their_field() {
    let place = places("prop").await.remove(0);
    let s = server(&place).await;
    let agent = s.agent("acme", "support-bot").await;
    let raw = |body: &str, content_type: &'static str| {
        common::call_as(
            &s.app,
            Method::POST,
            "/v1/proposals",
            &agent,
            content_type,
            body.to_owned(),
        )
    };
    let (status, body) = raw(
        r#"{"rationale": "a", "rationale": "b", "changes": []}"#,
        "application/json",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("duplicate_key")),
        "{body}"
    );
    let (status, _) = raw("{}", "text/plain").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = json!({"rationale": "x".repeat(70_000), "changes": []}).to_string();
    let (status, body) = raw(&huge, "application/json").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    for (proposal, field) in [
        (json!({"changes": deny_close()["changes"]}), "rationale"),
        (
            json!({"rationale": "  ", "changes": deny_close()["changes"]}),
            "rationale",
        ),
        (json!({"rationale": "r", "changes": []}), "changes"),
        (
            json!({"rationale": "r", "confidence": 2, "changes": deny_close()["changes"]}),
            "confidence",
        ),
        (
            json!({"rationale": "r", "evidence": ["../x"], "changes": deny_close()["changes"]}),
            "evidence[0]",
        ),
        (
            json!({"rationale": "a\u{1b}]8;;evil\u{7}", "changes": deny_close()["changes"]}),
            "rationale",
        ),
        (
            json!({"rationale": "r", "changes": [{"op": "nope"}]}),
            "changes[0]",
        ),
    ] {
        let (status, body) = s.propose(&agent, proposal.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{proposal}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}")),
            "{field}: {body}"
        );
    }
    let (status, body) = s
        .propose(
            &agent,
            json!({"rationale": "r", "changes": [{"op": "remove_rule", "id": "no-such-rule"}]}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("change_invalid")),
        "{body}"
    );
    let (status, body) = s
        .propose(&agent, json!({"rationale": "r", "changes": [{"op": "add_rule", "rule": {"id": "bad", "actions": ["x.y"], "effect": "alow"}}]}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("policy_invalid")),
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains("alow"), "{body}");
    assert!(s.events(kind::PROPOSAL_SUBMITTED).await.is_empty());
}

/// The long-poll returns the moment an approver decides (on the other replica, where the
/// database can tell it: PostgreSQL), and at its timeout otherwise.
#[tokio::test]
async fn a_wait_wakes_when_the_proposal_is_decided() {
    for place in places("prop").await {
        let a = server(&place).await;
        let b = match place {
            Place::Postgres(..) => server(&place).await,
            _ => server_with(&place, limits()).await,
        };
        let waiting_on = if matches!(place, Place::Postgres(..)) {
            &b
        } else {
            &a
        };
        let agent = a.agent("acme", "support-bot").await;
        let alice = a.approver("acme", "alice").await;
        let (_, body) = a.propose(&agent, allow_export("allow-export")).await;
        let id = body["id"].as_str().unwrap().to_owned();
        let (status, timed) = waiting_on
            .call(
                Method::GET,
                &format!("/v1/proposals/{id}/wait?timeout=1"),
                &agent,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(timed["timed_out"], true);
        let app = waiting_on.app.clone();
        let (path, token) = (format!("/v1/proposals/{id}/wait?timeout=20"), agent.clone());
        let started = Instant::now();
        let wait = tokio::spawn(async move {
            common::call(&app, Method::GET, &path, &token, Value::Null).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _) = a
            .call(
                Method::POST,
                &format!("/v1/proposals/{id}/reject"),
                &alice,
                json!({"reason": "not now"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, woke) = wait.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{woke}");
        assert_eq!(woke["status"], "rejected");
        assert_eq!(woke["timed_out"], false);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// A denied agent is pointed at the proposal route.
#[tokio::test]
async fn a_deny_offers_to_submit_a_proposal() {
    let place = places("prop").await.remove(0);
    let s = server(&place).await;
    let controller = s.role("acme", Role::Controller).await;
    let body = s
        .decide(
            &controller,
            json!({"type": "crm.export", "agent": "support-bot"}),
        )
        .await;
    assert_eq!(body["effect"], "deny");
    let steps = body["next_steps"].as_array().unwrap();
    assert!(
        steps.contains(
            &json!({"action": "submit_proposal", "method": "POST", "url": "/v1/proposals"})
        ),
        "{body}"
    );
}

/// An external reviewer on a local port: answers each review with `answer` (status, body)
/// after `delay`, and keeps what it was sent and the signature header.
async fn reviewer(
    answer: (u16, &'static str),
    delay: Duration,
) -> (String, Arc<std::sync::Mutex<Vec<(Value, String)>>>) {
    use axum::routing::post;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let route = post(move |headers: axum::http::HeaderMap, body: String| {
        let log = Arc::clone(&log);
        async move {
            let signature = headers
                .get("x-warden-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            log.lock()
                .unwrap()
                .push((serde_json::from_str(&body).unwrap(), signature));
            tokio::time::sleep(delay).await;
            (StatusCode::from_u16(answer.0).unwrap(), answer.1)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/review", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/review", route))
            .await
            .unwrap();
    });
    (url, seen)
}

fn reviewed_by(url: &str, timeout: Duration) -> Reviewers {
    let urls = [("acme".to_owned(), url.to_owned())].into_iter().collect();
    Reviewers::new(urls, Some(b"reviewer-secret".to_vec()), timeout).unwrap()
}

/// A tenant's external reviewer reads the proposal and Warden's analysis, and its `reject`
/// stops what Warden would have applied; both outcomes are in the audit event.
#[tokio::test]
async fn an_external_reviewer_can_reject_what_the_review_would_apply() {
    let (url, seen) = reviewer(
        (
            200,
            r#"{"verdict": "reject", "reason": "no new deny rules this week"}"#,
        ),
        Duration::ZERO,
    )
    .await;
    for place in places("prop").await {
        let s = server_reviewed(&place, limits(), reviewed_by(&url, Duration::from_secs(5))).await;
        let agent = s.agent("acme", "support-bot").await;
        let (status, body) = s.propose(&agent, deny_close()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "rejected", "{body}");
        assert_eq!(body["classification"], "narrowing", "{body}");
        assert_eq!(body["external_review"]["verdict"], "reject", "{body}");
        assert!(
            body["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains("no new deny rules this week")),
            "the agent reads why: {body}"
        );
        assert_eq!(s.revision("acme"), 1, "nothing was applied");

        let (sent, signature) = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(sent["proposal_id"], body["id"]);
        assert_eq!(sent["status"], "auto_approved", "Warden's own outcome");
        assert_eq!(sent["analysis"]["classification"], "narrowing");
        assert_eq!(sent["proposal"]["changes"][0]["op"], "add_rule");
        assert!(
            signature.starts_with("t=") && signature.contains(",v1="),
            "{signature}"
        );

        let submitted = s.events(kind::PROPOSAL_SUBMITTED).await;
        let detail = &submitted[0].event.detail;
        assert_eq!(detail["status"], "rejected");
        assert_eq!(detail["review_status"], "auto_approved");
        assert_eq!(detail["external_review"]["verdict"], "reject");
    }
}

/// An `approve` never applies what Warden sends to a human; a reviewer that errs, sends
/// garbage or is slower than its timeout leaves Warden's outcome, and the log says why.
#[tokio::test]
async fn an_external_reviewer_only_makes_outcomes_stricter_and_its_failures_change_nothing() {
    let (approving, _) = reviewer((200, r#"{"verdict": "approve"}"#), Duration::ZERO).await;
    let (failing, _) = reviewer((500, "oops"), Duration::ZERO).await;
    let (garbled, _) = reviewer((200, r#"{"verdict": "allow"}"#), Duration::ZERO).await;
    let (slow, _) = reviewer((200, r#"{"verdict": "reject"}"#), Duration::from_secs(3)).await;
    for place in places("prop").await {
        let s = server_reviewed(
            &place,
            limits(),
            reviewed_by(&approving, Duration::from_secs(5)),
        )
        .await;
        let agent = s.agent("acme", "support-bot").await;
        let (_, body) = s.propose(&agent, allow_export("approve")).await;
        assert_eq!(body["status"], "needs_human", "{body}");
        assert_eq!(body["external_review"]["verdict"], "approve", "{body}");
    }
    for (url, why) in [
        (&failing, "answered 500"),
        (&garbled, "no `verdict`"),
        (&slow, "did not answer within"),
    ] {
        for place in places("prop").await {
            let reviewers = reviewed_by(url, Duration::from_millis(300));
            let s = server_reviewed(&place, limits(), reviewers).await;
            let agent = s.agent("acme", "support-bot").await;
            let (status, body) = s.propose(&agent, deny_close()).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["status"], "auto_approved", "{why}: {body}");
            assert!(body["external_review"]["verdict"].is_null(), "{body}");
            assert!(
                body["external_review"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains(why),
                "{body}"
            );
            let submitted = s.events(kind::PROPOSAL_SUBMITTED).await;
            let detail = &submitted[0].event.detail;
            assert_eq!(detail["external_review"]["verdict"], Value::Null);
            assert_eq!(detail["status"], "auto_approved");
        }
    }
}
