//! Approvals and questions through the router (`oneshot`), on a SQLite file and, when
//! `WARDEN_TEST_DATABASE_URL` is set, on PostgreSQL in a schema of its own — including two
//! replicas on one database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers, not shipped code

use axum::Router;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_server::approvals::{SIGNATURE_HEADER, Webhooks};
use warden_server::keys::{self, KeySpec, Role};
use warden_server::{AppState, Limits};
use warden_store::{Event, EventFilter, Store, kind};

mod common;
use common::{Place, places};

const POLICY: &str = r#"
version: 1.0.0
default: deny
rules:
  - id: legal-escalation
    actions: [ticket.escalate]
    effect: require_approval
    approval: {approvers: [legal], expires_in: 4h}
    reason: legal-sensitive tickets need a human before escalation
  - id: big-refund
    actions: [payment.refund]
    effect: require_approval
    approval: {approvers: [finance], quorum: 2}
  - id: quick-close
    actions: [ticket.close]
    effect: require_approval
    approval: {approvers: [legal], expires_in: 1s}
  - id: vendor-payment
    actions: [vendor.pay]
    effect: require_approval
    approval: {approvers: [finance]}
    permit: {expires_in: 10m, max_uses: 2}
budgets:
  - {id: vendor-payments, per: tenant, count: {actions: [vendor.pay], limit: 1}}
"#;

/// One replica: a router over its own store.
struct Server {
    app: Router,
    store: Arc<dyn Store>,
    state: AppState,
    _policies: tempfile::TempDir,
}

async fn server(place: &Place, limits: Limits) -> Server {
    server_with(place, limits, Webhooks::default()).await
}

async fn server_with(place: &Place, limits: Limits, webhooks: Webhooks) -> Server {
    let r = common::replica(place, &[("default", POLICY)], limits, |s| {
        s.with_webhooks(webhooks)
    })
    .await;
    Server {
        app: r.app,
        store: r.store,
        state: r.state,
        _policies: r.policies,
    }
}

fn limits() -> Limits {
    Limits {
        key_cache_ttl: Duration::ZERO,
        ..Limits::default()
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

    async fn key(
        &self,
        tenant: &str,
        roles: Vec<Role>,
        user: Option<&str>,
        groups: &[&str],
    ) -> String {
        let spec = KeySpec {
            tenant: tenant.into(),
            roles,
            user: user.map(str::to_owned),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            agent: None,
            label: None,
        };
        keys::create(self.store.as_ref(), spec, "test", 1)
            .await
            .unwrap()
            .0
            .token
    }

    async fn agent_key(&self, agent: &str) -> String {
        let spec = KeySpec {
            tenant: "acme".into(),
            roles: vec![Role::Agent],
            agent: Some(agent.into()),
            ..KeySpec::default()
        };
        keys::create(self.store.as_ref(), spec, "test", 1)
            .await
            .unwrap()
            .0
            .token
    }

    async fn approver(&self, user: &str, group: &str) -> String {
        self.key("acme", vec![Role::Approver], Some(user), &[group])
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
}

/// Asks for a decision and returns its body, which must require approval.
async fn pending(s: &Server, controller: &str, action: Value) -> Value {
    let (status, body) = s
        .call(Method::POST, "/v1/decisions", controller, action)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["effect"], "require_approval", "{body}");
    body
}

fn approval_id(decision: &Value) -> String {
    decision["approval"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_approval_is_opened_with_its_decision_approved_and_the_decision_becomes_allow() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let alice = s.approver("alice", "legal").await;
        let finance = s.approver("fred", "finance").await;
        let action = json!({"id": "esc-1", "type": "ticket.escalate", "target": {"type": "ticket", "id": "T-1"}, "on_behalf_of": "user-991"});
        let decision = pending(&s, &controller, action.clone()).await;
        let approval = &decision["approval"];
        assert_eq!(approval["status"], "pending");
        assert_eq!(approval["approvers"], json!(["legal"]));
        let id = approval_id(&decision);
        assert_eq!(approval["wait_url"], format!("/v1/approvals/{id}/wait"));
        assert!(approval["expires_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(decision["permit"], Value::Null);

        // Replaying the decision returns the same approval, and opens no other.
        let (_, replay) = s
            .call(Method::POST, "/v1/decisions", &controller, action)
            .await;
        assert_eq!(replay["replayed"], true);
        assert_eq!(approval_id(&replay), id);

        // The decision event links the approval; the approval is listed for its group.
        let events = s.events(kind::DECISION).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.detail["approval_id"], id.as_str());
        let (status, list) = s
            .call(
                Method::GET,
                "/v1/approvals?status=pending",
                &alice,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["approvals"][0]["id"], id.as_str());
        assert_eq!(list["approvals"][0]["rule_id"], "legal-escalation");
        let (_, other) = s
            .call(Method::GET, "/v1/approvals", &finance, Value::Null)
            .await;
        assert_eq!(other["approvals"], json!([]), "not finance's approval");
        let (status, _) = s
            .call(
                Method::POST,
                &format!("/v1/approvals/{id}/approve"),
                &finance,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        let (status, approved) = s
            .call(
                Method::POST,
                &format!("/v1/approvals/{id}/approve"),
                &alice,
                json!({"reason": "checked with counsel"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{approved}");
        assert_eq!(approved["status"], "approved");
        assert_eq!(approved["votes"][0]["user"], "alice");

        let decision_id = decision["decision_id"].as_str().unwrap();
        let (_, final_decision) = s
            .call(
                Method::GET,
                &format!("/v1/decisions/{decision_id}"),
                &controller,
                Value::Null,
            )
            .await;
        assert_eq!(final_decision["effect"], "allow", "{final_decision}");
        assert_eq!(final_decision["reasons"][0]["code"], "approval_granted");
        assert_eq!(final_decision["approval"]["status"], "approved");

        // The first decision stays in the log as it was; the vote and the outcome follow.
        let events = s.events(kind::DECISION).await;
        assert_eq!(events[0].event.effect.as_deref(), Some("require_approval"));
        let votes = s.events(kind::APPROVAL_VOTE).await;
        assert_eq!(votes.len(), 1);
        assert_eq!(votes[0].event.decision_id.as_deref(), Some(decision_id));
        assert_eq!(votes[0].event.detail["user"], "alice");
        let outcomes = s.events(kind::APPROVAL_OUTCOME).await;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].event.effect.as_deref(), Some("allow"));
        assert_eq!(s.store.verify().await.unwrap().first_broken, None);

        // Deciding again: 409 with the outcome.
        let bob = s.approver("bob", "legal").await;
        let (status, body) = s
            .call(
                Method::POST,
                &format!("/v1/approvals/{id}/reject"),
                &bob,
                json!({"reason": "late"}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], "already_decided");
        assert!(body["detail"].as_str().unwrap().contains("approved"));
    }
}

#[tokio::test]
async fn a_rejection_needs_a_reason_and_makes_the_decision_a_deny_with_it() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let alice = s.approver("alice", "legal").await;
        let decision = pending(&s, &controller, json!({"type": "ticket.escalate"})).await;
        let id = approval_id(&decision);
        let path = format!("/v1/approvals/{id}/reject");
        let (status, body) = s.call(Method::POST, &path, &alice, json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = s
            .call(
                Method::POST,
                &path,
                &alice,
                json!({"reason": "x", "extra": 1}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = s
            .call(
                Method::POST,
                &path,
                &alice,
                json!({"reason": "not without the customer's consent"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "rejected");
        let decision_id = decision["decision_id"].as_str().unwrap();
        let (_, d) = s
            .call(
                Method::GET,
                &format!("/v1/decisions/{decision_id}"),
                &controller,
                Value::Null,
            )
            .await;
        assert_eq!(d["effect"], "deny");
        assert_eq!(
            d["reasons"][0]["message"],
            "rejected by alice: not without the customer's consent"
        );
        let outcomes = s.events(kind::APPROVAL_OUTCOME).await;
        assert_eq!(outcomes[0].event.detail["status"], "rejected");
    }
}

#[tokio::test]
async fn separation_of_duties_keeps_the_requester_the_agent_and_the_beneficiary_out() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        // A key that both asks and approves may not approve what it asked.
        let both = keys::create(
            s.store.as_ref(),
            KeySpec {
                tenant: "acme".into(),
                roles: vec![Role::Controller, Role::Approver],
                agent: Some("d*".into()),
                user: Some("carol".into()),
                groups: vec!["legal".into()],
                label: None,
            },
            "test",
            1,
        )
        .await
        .unwrap()
        .0
        .token;
        let decision = pending(
            &s,
            &both,
            json!({"type": "ticket.escalate", "on_behalf_of": "alice", "agent": "dana"}),
        )
        .await;
        let id = approval_id(&decision);
        let path = format!("/v1/approvals/{id}/approve");
        for (who, key) in [
            ("the asking key", both.clone()),
            ("the beneficiary", s.approver("alice", "legal").await),
            ("the agent", s.approver("dana", "legal").await),
        ] {
            let (status, body) = s.call(Method::POST, &path, &key, json!({})).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {body}");
        }
        assert!(
            s.events(kind::APPROVAL_VOTE).await.is_empty(),
            "refusals write nothing"
        );
        let (status, _) = s
            .call(
                Method::POST,
                &path,
                &s.approver("erin", "legal").await,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_quorum_of_two_needs_two_distinct_users() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let decision = pending(&s, &controller, json!({"type": "payment.refund"})).await;
        let id = approval_id(&decision);
        let path = format!("/v1/approvals/{id}/approve");
        let alice = s.approver("alice", "finance").await;
        // A second key of the same person counts as the same user.
        let alice_again = s.approver("alice", "finance").await;
        let bob = s.approver("bob", "finance").await;

        let (status, body) = s.call(Method::POST, &path, &alice, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "pending");
        assert_eq!(body["quorum"], 2);
        let (status, body) = s.call(Method::POST, &path, &alice_again, json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("already voted"));
        let (status, body) = s.call(Method::POST, &path, &bob, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "approved");
        assert_eq!(s.events(kind::APPROVAL_VOTE).await.len(), 2);
        assert_eq!(s.events(kind::APPROVAL_OUTCOME).await.len(), 1);
    }
}

#[tokio::test]
async fn an_expired_approval_is_a_deny_audited_once_even_with_two_replicas_sweeping() {
    for place in places("appr").await {
        let a = server(&place, limits()).await;
        let b = server(&place, limits()).await;
        let controller = a.key("acme", vec![Role::Controller], None, &[]).await;
        let mut ids = Vec::new();
        for _ in 0..5 {
            let decision = pending(&a, &controller, json!({"type": "ticket.close"})).await;
            ids.push(decision["decision_id"].as_str().unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (x, y) = tokio::join!(
            warden_server::approvals::sweep_once(&a.state),
            warden_server::approvals::sweep_once(&b.state)
        );
        assert_eq!(x + y, 5, "each approval is expired by one replica");
        assert_eq!(warden_server::approvals::sweep_once(&a.state).await, 0);
        let outcomes = a.events(kind::APPROVAL_OUTCOME).await;
        assert_eq!(outcomes.len(), 5);
        assert!(
            outcomes
                .iter()
                .all(|e| e.event.detail["status"] == "expired")
        );
        let (_, d) = a
            .call(
                Method::GET,
                &format!("/v1/decisions/{}", ids[0]),
                &controller,
                Value::Null,
            )
            .await;
        assert_eq!(d["effect"], "deny");
        assert_eq!(d["reasons"][0]["code"], "approval_expired");
        let alice = a.approver("alice", "legal").await;
        let approval = d["approval"]["id"].as_str().unwrap();
        let (status, body) = b
            .call(
                Method::POST,
                &format!("/v1/approvals/{approval}/approve"),
                &alice,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("expired"));
    }
}

#[tokio::test]
async fn an_expired_approval_reads_as_a_deny_without_a_sweeper() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let decision = pending(&s, &controller, json!({"type": "ticket.close"})).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let id = decision["decision_id"].as_str().unwrap();
        let (_, d) = s
            .call(
                Method::GET,
                &format!("/v1/decisions/{id}"),
                &controller,
                Value::Null,
            )
            .await;
        assert_eq!(d["effect"], "deny", "{d}");
        assert_eq!(s.events(kind::APPROVAL_OUTCOME).await.len(), 1);
        let (_, d) = s
            .call(
                Method::GET,
                &format!("/v1/decisions/{id}"),
                &controller,
                Value::Null,
            )
            .await;
        assert_eq!(d["effect"], "deny");
        assert_eq!(
            s.events(kind::APPROVAL_OUTCOME).await.len(),
            1,
            "audited once"
        );
    }
}

#[tokio::test]
async fn a_waiter_wakes_when_another_replica_approves() {
    for place in places("appr").await {
        let a = server(&place, limits()).await;
        // SQLite: one replica, woken in process; PostgreSQL: a second replica approves.
        let b = match place {
            Place::Sqlite(..) | Place::Memory(..) => None,
            Place::Postgres(..) => Some(server(&place, limits()).await),
        };
        let approving = b.as_ref().unwrap_or(&a);
        let controller = a.key("acme", vec![Role::Controller], None, &[]).await;
        let alice = a.approver("alice", "legal").await;
        for _ in 0..3 {
            let decision = pending(&a, &controller, json!({"type": "ticket.escalate"})).await;
            let id = approval_id(&decision);
            let app = a.app.clone();
            let token = controller.clone();
            let path = format!("/v1/approvals/{id}/wait?timeout=20");
            let waiter = tokio::spawn(async move {
                let answer = common::call(&app, Method::GET, &path, &token, Value::Null).await;
                (answer, Instant::now())
            });
            // Let the waiter register and read the pending state first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (status, _) = approving
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{id}/approve"),
                    &alice,
                    json!({}),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            let approved_at = Instant::now();
            let ((status, body), woke_at) = waiter.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["status"], "approved");
            assert_eq!(body["timed_out"], false);
            assert_eq!(body["decision"]["effect"], "allow");
            let latency = woke_at.saturating_duration_since(approved_at);
            assert!(latency < Duration::from_secs(1), "woke after {latency:?}");
        }
    }
}

#[tokio::test]
async fn a_wait_times_out_with_the_current_state_and_waiters_are_bounded() {
    for place in places("appr").await {
        let s = server(
            &place,
            Limits {
                max_waiters: 1,
                request_timeout: Duration::from_millis(500),
                ..limits()
            },
        )
        .await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let decision = pending(&s, &controller, json!({"type": "ticket.escalate"})).await;
        let id = approval_id(&decision);
        let started = Instant::now();
        let app = s.app.clone();
        let token = controller.clone();
        let path = format!("/v1/approvals/{id}/wait?timeout=2");
        let first = tokio::spawn(async move {
            common::call(&app, Method::GET, &path, &token, Value::Null).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = s
            .call(
                Method::GET,
                &format!("/v1/approvals/{id}/wait?timeout=1"),
                &controller,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "overloaded");
        // Past the request timeout (0.5 s): waits have their own.
        let (status, body) = first.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["timed_out"], true);
        assert_eq!(body["status"], "pending");
        assert!(started.elapsed() >= Duration::from_secs(2));
        for bad in [
            "timeout=0",
            "timeout=301",
            "timeout=x",
            "timeout=1&timeout=2",
            "other=1",
        ] {
            let (status, _) = s
                .call(
                    Method::GET,
                    &format!("/v1/approvals/{id}/wait?{bad}"),
                    &controller,
                    Value::Null,
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}

#[tokio::test]
async fn another_tenants_approval_is_not_found() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let decision = pending(&s, &controller, json!({"type": "ticket.escalate"})).await;
        let id = approval_id(&decision);
        let outsider = s
            .key("globex", vec![Role::Approver], Some("olga"), &["legal"])
            .await;
        let outsider_controller = s.key("globex", vec![Role::Controller], None, &[]).await;
        let (status, _) = s
            .call(
                Method::GET,
                &format!("/v1/approvals/{id}"),
                &outsider,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = s
            .call(
                Method::POST,
                &format!("/v1/approvals/{id}/approve"),
                &outsider,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = s
            .call(
                Method::GET,
                &format!("/v1/approvals/{id}/wait?timeout=1"),
                &outsider_controller,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let admin = s.key("acme", vec![Role::Admin], None, &[]).await;
        let (status, body) = s
            .call(
                Method::GET,
                &format!("/v1/approvals/{id}"),
                &admin,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn a_question_with_options_is_answered_waited_on_and_audited() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let agent = s.agent_key("support-bot").await;
        let alice = s.approver("alice", "legal").await;
        let (status, q) = s
            .call(
                Method::POST,
                "/v1/questions",
                &agent,
                json!({"question": "Refund the full amount?", "options": ["yes", "no"], "run_id": "run-7"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{q}");
        assert_eq!(q["kind"], "question");
        assert_eq!(q["agent"], "support-bot");
        let id = q["id"].as_str().unwrap().to_owned();
        for bad in [
            json!({"question": ""}),
            json!({"question": "x", "options": ["a", "a"]}),
            json!({"question": "x", "expires_in": "1 hour"}),
            json!({"question": "x".repeat(2001)}),
            json!({"question": "x", "extra": true}),
        ] {
            let (status, _) = s
                .call(Method::POST, "/v1/questions", &agent, bad.clone())
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        }
        let (_, listed) = s
            .call(
                Method::GET,
                "/v1/approvals?kind=question",
                &alice,
                Value::Null,
            )
            .await;
        assert_eq!(listed["approvals"][0]["id"], id.as_str());

        // A question is not approved or rejected (found by schemathesis: this was a 400 to
        // a schema-valid body); nothing is written.
        for verdict in ["approve", "reject"] {
            let (status, body) = s
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{id}/{verdict}"),
                    &alice,
                    json!({"reason": "fine"}),
                )
                .await;
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["error"], "wrong_kind", "{body}");
        }
        assert!(s.events(kind::QUESTION_OUTCOME).await.is_empty());

        let app = s.app.clone();
        let token = agent.clone();
        let path = format!("/v1/questions/{id}/wait?timeout=20");
        let waiter = tokio::spawn(async move {
            common::call(&app, Method::GET, &path, &token, Value::Null).await
        });
        let answer = format!("/v1/questions/{id}/answer");
        let (status, _) = s
            .call(Method::POST, &answer, &alice, json!({"answer": "maybe"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = s
            .call(Method::POST, &answer, &alice, json!({"answer": "yes"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, waited) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{waited}");
        assert_eq!(waited["status"], "answered");
        assert_eq!(waited["answer"], "yes");
        let (status, _) = s
            .call(Method::POST, &answer, &alice, json!({"answer": "no"}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);

        let asked = s.events(kind::QUESTION_ASKED).await;
        assert_eq!(asked[0].event.detail["question"], "Refund the full amount?");
        let answered = s.events(kind::QUESTION_OUTCOME).await;
        assert_eq!(answered[0].event.detail["answer"], "yes");
    }
}

/// A receiver that fails its first `failures` deliveries with 500 and records the rest.
async fn receiver(failures: usize) -> (String, Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    use axum::routing::post;
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen, tries) = (Arc::clone(&got), Arc::clone(&attempts));
    let app = Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let (seen, tries) = (Arc::clone(&seen), Arc::clone(&tries));
            async move {
                if tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < failures {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let signature = headers[SIGNATURE_HEADER].to_str().unwrap().to_owned();
                seen.lock().unwrap().push((signature, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test]
async fn webhooks_are_signed_retried_from_the_outbox_and_never_block_a_decision() {
    for place in places("appr").await {
        let (url, got) = receiver(2).await;
        let secret = b"webhook secret".to_vec();
        let webhooks = Webhooks::new(
            [("acme".to_owned(), url)].into_iter().collect(),
            Some(secret.clone()),
        );
        let s = server_with(&place, limits(), webhooks).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let alice = s.approver("alice", "legal").await;
        // The receiver is failing: the decision is answered all the same.
        let decision = pending(&s, &controller, json!({"type": "ticket.escalate"})).await;
        let id = approval_id(&decision);
        let client = reqwest::Client::new();
        let started = Instant::now();
        while got.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "never delivered"
            );
            warden_server::approvals::deliver_once(&s.state, &client).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Two failures: retried after 1 s and 2 s.
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let (_, status) = s
            .call(
                Method::POST,
                &format!("/v1/approvals/{id}/approve"),
                &alice,
                json!({}),
            )
            .await;
        assert_eq!(status["status"], "approved");
        while got.lock().unwrap().len() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never delivered"
            );
            warden_server::approvals::deliver_once(&s.state, &client).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = got.lock().unwrap().clone();
        let events: Vec<Value> = got
            .iter()
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(events[0]["type"], "approval.created");
        assert_eq!(events[0]["approval"]["id"], id.as_str());
        assert_eq!(events[1]["type"], "approval.decided");
        assert_eq!(events[1]["approval"]["status"], "approved");
        // The documented recipe: HMAC-SHA256 over "<t>.<body>".
        for (signature, body) in &got {
            let t: i64 = signature
                .split(',')
                .find_map(|p| p.strip_prefix("t="))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(signature, &Webhooks::sign(&secret, t, body));
        }
    }
}

/// After the LISTEN connection is cut, the listener reconnects and every waiter re-reads
/// its approval, so a decision made meanwhile is not missed.
#[tokio::test]
async fn a_waiter_survives_the_listener_losing_its_connection() {
    for place in places("appr").await {
        let Place::Postgres(url, _) = &place else {
            continue;
        };
        let a = server(&place, limits()).await;
        let b = server(&place, limits()).await;
        let controller = a.key("acme", vec![Role::Controller], None, &[]).await;
        let alice = a.approver("alice", "legal").await;
        let decision = pending(&a, &controller, json!({"type": "ticket.escalate"})).await;
        let id = approval_id(&decision);
        let app = a.app.clone();
        let path = format!("/v1/approvals/{id}/wait?timeout=20");
        let token = controller.clone();
        let waiter = tokio::spawn(async move {
            common::call(&app, Method::GET, &path, &token, Value::Null).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Cut every listening connection (this test's replicas' and any other's: they
        // reconnect the same way).
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        let cut = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(!cut.is_empty(), "no listening connection found");
        let (status, _) = b
            .call(
                Method::POST,
                &format!("/v1/approvals/{id}/approve"),
                &alice,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "approved", "{body}");
        assert_eq!(body["timed_out"], false, "{body}");
    }
}

/// The tenant's `vendor-payments` counter, if any action was charged to it.
async fn vendor_payments(s: &Server) -> Option<i64> {
    let rows = s
        .store
        .counters(&warden_store::CounterFilter {
            tenant: "acme".into(),
            agent: None,
            run_id: None,
            now_ms: warden_server::state::now_ms(),
        })
        .await
        .unwrap();
    rows.iter()
        .filter(|r| r.key.limit_id == "vendor-payments")
        .find_map(|r| r.values.get("actions"))
        .map(|v| v.value)
}

#[tokio::test]
async fn an_approved_action_gets_a_permit_for_its_payload_and_is_charged_when_granted() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let fred = s.approver("fred", "finance").await;
        let pay = |n: u32| json!({"type": "vendor.pay", "target": {"type": "invoice", "id": format!("INV-{n}")}, "payload": {"amount": 120.5, "currency": "EUR", "n": n}});
        let first = pending(&s, &controller, pay(1)).await;
        let second = pending(&s, &controller, pay(2)).await;
        assert_eq!(vendor_payments(&s).await, None, "asking charges nothing");

        let approve = |id: String| {
            let (s, fred) = (&s, &fred);
            async move {
                s.call(
                    Method::POST,
                    &format!("/v1/approvals/{id}/approve"),
                    fred,
                    json!({}),
                )
                .await
            }
        };
        let (status, view) = approve(approval_id(&first)).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(vendor_payments(&s).await, Some(1), "charged by the grant");
        let decision = |d: &Value| {
            let path = format!("/v1/decisions/{}", d["decision_id"].as_str().unwrap());
            let (s, controller) = (&s, &controller);
            async move { s.call(Method::GET, &path, controller, Value::Null).await.1 }
        };
        let granted = decision(&first).await;
        assert_eq!(granted["effect"], "allow", "{granted}");
        let permit = &granted["permit"];
        assert_eq!(
            permit["max_uses"], 2,
            "the rule's permit settings: {granted}"
        );
        let token = permit["token"].as_str().unwrap().to_owned();

        // The permit is the approved action's: its payload verifies, another does not.
        let verify = |payload: Value| {
            let (s, controller, token) = (&s, &controller, token.clone());
            async move {
                s.call(
                    Method::POST,
                    "/v1/permits/verify",
                    controller,
                    json!({"permit": token, "payload": payload}),
                )
                .await
                .1
            }
        };
        let other = verify(json!({"amount": 99999, "currency": "EUR", "n": 1})).await;
        assert_eq!(
            (other["valid"].clone(), other["reason"].clone()),
            (json!(false), json!("payload_mismatch"))
        );
        let ok = verify(pay(1)["payload"].clone()).await;
        assert_eq!(ok["valid"], true, "{ok}");

        // The second grant finds the budget used up: approved by a human, denied by the
        // limit, with no permit, and the counter stays at its ceiling.
        let (status, view) = approve(approval_id(&second)).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["status"], "approved");
        assert!(
            view["reason"].as_str().unwrap().contains("vendor-payments"),
            "{view}"
        );
        let denied = decision(&second).await;
        assert_eq!(denied["effect"], "deny", "{denied}");
        assert_eq!(denied["permit"], Value::Null);
        assert_eq!(denied["reasons"][0]["code"], "budget_exceeded");
        assert_eq!(denied["reasons"][0]["limit"]["id"], "vendor-payments");
        assert_eq!(denied["reasons"][1]["code"], "approval_granted");
        assert_eq!(vendor_payments(&s).await, Some(1));
        let outcomes = s.events(kind::APPROVAL_OUTCOME).await;
        let effects: Vec<_> = outcomes
            .iter()
            .map(|e| {
                (
                    e.event.decision_id.clone().unwrap(),
                    e.event.effect.clone().unwrap(),
                )
            })
            .collect();
        assert!(effects.contains(&(
            first["decision_id"].as_str().unwrap().into(),
            "allow".into()
        )));
        assert!(effects.contains(&(
            second["decision_id"].as_str().unwrap().into(),
            "deny".into()
        )));
        let limited = outcomes
            .iter()
            .find(|e| e.event.effect.as_deref() == Some("deny"))
            .unwrap();
        assert_eq!(limited.event.detail["limit"]["id"], "vendor-payments");
        assert_eq!(s.store.verify().await.unwrap().first_broken, None);
    }
}

/// The id of an issued key, from its token (`wdn_<id>_<secret>`).
fn key_id(token: &str) -> String {
    token.split('_').nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn simultaneous_votes_on_two_replicas_decide_an_approval_once() {
    for place in places("appr").await {
        let (a, b) = (
            server(&place, limits()).await,
            server(&place, limits()).await,
        );
        let controller = a.key("acme", vec![Role::Controller], None, &[]).await;
        // Quorum 1: of eight approvers voting at once, across both replicas, one decides.
        let decision = pending(&a, &controller, json!({"type": "ticket.escalate"})).await;
        let id = approval_id(&decision);
        let mut approvers = Vec::new();
        for n in 0..8 {
            approvers.push(a.approver(&format!("user-{n}"), "legal").await);
        }
        let mut votes = Vec::new();
        for (n, key) in approvers.iter().enumerate() {
            let app = if n % 2 == 0 {
                a.app.clone()
            } else {
                b.app.clone()
            };
            let (verdict, body) = if n % 3 == 0 {
                ("reject", json!({"reason": "no"}))
            } else {
                ("approve", json!({}))
            };
            let (path, key) = (format!("/v1/approvals/{id}/{verdict}"), key.clone());
            votes.push(tokio::spawn(async move {
                common::call(&app, Method::POST, &path, &key, body).await
            }));
        }
        let mut answers = Vec::new();
        for vote in votes {
            answers.push(vote.await.unwrap());
        }
        let won: Vec<_> = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .collect();
        assert_eq!(won.len(), 1, "{answers:?}");
        assert!(
            answers
                .iter()
                .all(|(status, body)| *status == StatusCode::OK
                    || (*status == StatusCode::CONFLICT && body["error"] == "already_decided")),
            "{answers:?}"
        );
        let votes = a.events(kind::APPROVAL_VOTE).await;
        let outcomes = a.events(kind::APPROVAL_OUTCOME).await;
        assert_eq!((votes.len(), outcomes.len()), (1, 1));
        let (_, final_view) = a
            .call(
                Method::GET,
                &format!("/v1/approvals/{id}"),
                &approvers[0],
                Value::Null,
            )
            .await;
        assert_eq!(final_view["status"], won[0].1["status"]);

        // Quorum 2: two different people approving at once both count, and it is approved
        // once.
        let decision = pending(&a, &controller, json!({"type": "payment.refund"})).await;
        let path = format!("/v1/approvals/{}/approve", approval_id(&decision));
        let (fin1, fin2) = (
            a.approver("f1", "finance").await,
            a.approver("f2", "finance").await,
        );
        let (one, two) = tokio::join!(
            a.call(Method::POST, &path, &fin1, json!({})),
            b.call(Method::POST, &path, &fin2, json!({}))
        );
        assert_eq!(
            (one.0, two.0),
            (StatusCode::OK, StatusCode::OK),
            "{one:?} {two:?}"
        );
        let statuses = [one.1["status"].clone(), two.1["status"].clone()];
        assert!(statuses.contains(&json!("approved")), "{statuses:?}");
        assert!(statuses.contains(&json!("pending")), "{statuses:?}");
        assert_eq!(a.events(kind::APPROVAL_OUTCOME).await.len(), 2);
        assert_eq!(a.store.verify().await.unwrap().first_broken, None);
    }
}

#[tokio::test]
async fn a_revoked_approver_key_decides_nothing() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let alice = s.approver("alice", "legal").await;
        let decision = pending(&s, &controller, json!({"type": "ticket.escalate"})).await;
        let id = approval_id(&decision);
        assert!(s.store.revoke_key(&key_id(&alice), 1).await.unwrap());
        let (status, body) = s
            .call(
                Method::POST,
                &format!("/v1/approvals/{id}/approve"),
                &alice,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(s.events(kind::APPROVAL_VOTE).await.is_empty());
        let (_, list) = s
            .call(Method::GET, "/v1/approvals", &alice, Value::Null)
            .await;
        assert_eq!(list["error"], "unauthorized", "{list}");
        let view = s.store.approval("acme", &id).await.unwrap().unwrap();
        assert_eq!(view.status, "pending");
    }
}

#[tokio::test]
async fn an_approvers_listing_limit_counts_only_what_it_may_see() {
    for place in places("appr").await {
        let s = server(&place, limits()).await;
        let controller = s.key("acme", vec![Role::Controller], None, &[]).await;
        let alice = s.approver("alice", "legal").await;
        let legal = pending(&s, &controller, json!({"type": "ticket.escalate"})).await;
        // Newer approvals for another group come first in the table, not in alice's page.
        for _ in 0..3 {
            pending(&s, &controller, json!({"type": "payment.refund"})).await;
        }
        let (status, list) = s
            .call(
                Method::GET,
                "/v1/approvals?status=pending&limit=1",
                &alice,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["approvals"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list["approvals"][0]["id"], approval_id(&legal).as_str());
    }
}
