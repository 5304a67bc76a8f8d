//! Learning from friction through the router (`oneshot`), on a SQLite file, SQLite in memory
//! and, when `WARDEN_TEST_DATABASE_URL` is set, PostgreSQL — including two replicas on one
//! database: repeated denials and repeated human approvals become one observed suggestion,
//! reviewed like an agent's proposal and decided by a human.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers, not shipped code

use axum::Router;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_server::Limits;
use warden_server::keys::{self, KeySpec, Role};
use warden_store::{Event, EventFilter, ProposalFilter, ProposalRecord, Store, kind};

mod common;
use common::{Place, places};

/// `acme` and `globex` take proposals; `initech` has them off.
const ACME: &str = r#"
version: 1.0.0
default: deny
proposals: on
rules:
  - id: read-tickets
    actions: [ticket.read]
    effect: allow
  - id: refunds-need-approval
    actions: [ticket.refund]
    effect: require_approval
    approval: {approvers: [finance]}
  - id: refunds
    actions: [ticket.refund]
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

struct Server {
    app: Router,
    store: Arc<dyn Store>,
    _policies: tempfile::TempDir,
}

async fn server(place: &Place) -> Server {
    server_with(place, Limits::default()).await
}

async fn server_with(place: &Place, limits: Limits) -> Server {
    let limits = Limits {
        key_cache_ttl: Duration::ZERO,
        policy_poll: Duration::from_millis(50),
        ..limits
    };
    let policies = [("acme", ACME), ("globex", ACME), ("initech", INITECH)];
    let r = common::replica(place, &policies, limits, |s| s).await;
    Server {
        app: r.app,
        store: r.store,
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

    async fn controller(&self, tenant: &str) -> String {
        self.key(KeySpec {
            tenant: tenant.into(),
            agent: Some("*".into()),
            roles: vec![Role::Controller],
            ..KeySpec::default()
        })
        .await
    }

    async fn approver(&self, tenant: &str, user: &str, group: &str) -> String {
        self.key(KeySpec {
            tenant: tenant.into(),
            roles: vec![Role::Approver],
            user: Some(user.into()),
            groups: vec![group.into()],
            ..KeySpec::default()
        })
        .await
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

    /// Asks for a decision; returns its id and effect.
    async fn decide(&self, controller: &str, action: Value) -> (String, String) {
        let (status, body) = self
            .call(Method::POST, "/v1/decisions", controller, action)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            body["decision_id"].as_str().unwrap().to_owned(),
            body["effect"].as_str().unwrap().to_owned(),
        )
    }

    async fn observed(&self, tenant: &str) -> Vec<ProposalRecord> {
        self.store
            .proposals(&ProposalFilter {
                tenant: tenant.into(),
                limit: 1000,
                ..ProposalFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.source() == "observed")
            .collect()
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

    /// Waits (at most 20 s: each observation runs a review) until the tenant's observed
    /// suggestions satisfy `check`; returns them.
    async fn eventually(
        &self,
        tenant: &str,
        what: &str,
        check: impl Fn(&[ProposalRecord]) -> bool,
    ) -> Vec<ProposalRecord> {
        let start = Instant::now();
        loop {
            let found = self.observed(tenant).await;
            if check(&found) {
                return found;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never: {what}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn export(agent: &str, account: &str) -> Value {
    json!({"type": "crm.export", "agent": agent, "target": {"type": "account", "id": account}})
}

fn evidence_of(record: &ProposalRecord) -> Vec<String> {
    let body: Value = serde_json::from_str(&record.body).unwrap();
    body["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e.as_str()
                .unwrap()
                .trim_start_matches("decision:")
                .to_owned()
        })
        .collect()
}

/// Give the observer time to (not) act, for the cases where nothing must happen.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn repeated_denials_become_one_suggestion_a_human_approves() {
    for place in places("obs").await {
        let s = server(&place).await;
        let controller = s.controller("acme").await;
        let mut ids = Vec::new();
        for account in ["A-1", "A-2", "A-3"] {
            let (id, effect) = s.decide(&controller, export("support-bot", account)).await;
            assert_eq!(effect, "deny");
            ids.push(id);
        }
        let found = s
            .eventually("acme", "one suggestion with 3 hits", |f| {
                f.len() == 1 && f[0].hits == 3
            })
            .await;
        let p = &found[0];
        assert_eq!(p.status, "needs_human");
        assert_eq!(p.agent, "support-bot");
        assert_eq!(p.key_id, "observed");
        let mut evidence = evidence_of(p);
        evidence.sort();
        ids.sort();
        assert_eq!(evidence, ids, "the three denials are the evidence");
        let review: Value = serde_json::from_str(&p.review).unwrap();
        assert_eq!(review["classification"], "broadening", "{review}");
        assert_eq!(review["status"], "needs_human", "{review}");

        // A fourth denial updates it: one row, four hits.
        let (fourth, _) = s.decide(&controller, export("support-bot", "A-4")).await;
        let found = s
            .eventually("acme", "the same suggestion with 4 hits", |f| {
                f.len() == 1 && f[0].hits == 4
            })
            .await;
        assert_eq!(found[0].id, p.id);
        assert!(evidence_of(&found[0]).contains(&fourth));
        let observed = s.events(kind::PROPOSAL_OBSERVED).await;
        assert_eq!(observed.len(), 2, "{observed:?}");
        assert_eq!(observed[0].event.detail["updated"], false);
        assert_eq!(observed[0].event.detail["hits"], 3);
        assert_eq!(observed[1].event.detail["updated"], true);
        assert_eq!(observed[1].event.detail["hits"], 4);
        assert_eq!(observed[1].event.detail["proposal_id"], p.id.as_str());
        assert_eq!(
            observed[1].event.detail["reviewed"], false,
            "the same change is not reviewed again"
        );
        assert_eq!(found[0].review, p.review, "its analysis stands");
        assert_eq!(found[0].review_token, p.review_token);
        assert_eq!(observed[1].event.agent.as_deref(), Some("support-bot"));

        // Listed with the agents' ones, with its source; its agent sees it, another not.
        let alice = s.approver("acme", "alice", "policy").await;
        let (status, list) = s
            .call(
                Method::GET,
                "/v1/proposals?source=observed",
                &alice,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["proposals"][0]["source"], "observed", "{list}");
        assert_eq!(list["proposals"][0]["hits"], 4, "{list}");
        let (_, none) = s
            .call(
                Method::GET,
                "/v1/proposals?source=agent",
                &alice,
                Value::Null,
            )
            .await;
        assert_eq!(none["proposals"], json!([]), "{none}");
        let own = s.agent("acme", "support-bot").await;
        let (status, shown) = s
            .call(
                Method::GET,
                &format!("/v1/proposals/{}", p.id),
                &own,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["source"], "observed");
        assert_eq!(shown["observed_key"][0], "denied");
        let other = s.agent("acme", "billing-bot").await;
        let (status, _) = s
            .call(
                Method::GET,
                &format!("/v1/proposals/{}", p.id),
                &other,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The agent itself may not approve it; a human does, and the action is allowed.
        let (status, shown) = s
            .call(
                Method::GET,
                &format!("/v1/proposals/{}", p.id),
                &alice,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, approved) = s
            .call(
                Method::POST,
                &format!("/v1/proposals/{}/approve", p.id),
                &alice,
                json!({"review_token": shown["review_token"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{approved}");
        assert_eq!(approved["status"], "approved", "{approved}");
        let start = Instant::now();
        loop {
            let (_, effect) = s.decide(&controller, export("support-bot", "A-9")).await;
            if effect == "allow" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never allowed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Only for that agent.
        let (_, effect) = s.decide(&controller, export("billing-bot", "A-9")).await;
        assert_eq!(effect, "deny");
    }
}

#[tokio::test]
async fn other_tenants_and_tenants_without_proposals_get_no_suggestion() {
    for place in places("obs").await {
        let s = server(&place).await;
        let acme = s.controller("acme").await;
        let globex = s.controller("globex").await;
        let initech = s.controller("initech").await;
        for account in ["A-1", "A-2"] {
            s.decide(&acme, export("support-bot", account)).await;
            s.decide(&globex, export("support-bot", account)).await;
        }
        for account in ["A-1", "A-2", "A-3"] {
            s.decide(&initech, export("support-bot", account)).await;
        }
        // Another kind of target, or no target, is other friction.
        s.decide(
            &acme,
            json!({"type": "crm.export", "agent": "support-bot", "target": {"type": "lead", "id": "L"}}),
        )
        .await;
        settle().await;
        assert!(
            s.observed("acme").await.is_empty(),
            "two denials of acme's are not three"
        );
        assert!(s.observed("globex").await.is_empty());
        assert!(s.observed("initech").await.is_empty(), "proposals are off");
        // The third of acme's makes one in acme only.
        s.decide(&acme, export("support-bot", "A-3")).await;
        s.eventually("acme", "one suggestion", |f| f.len() == 1 && f[0].hits == 3)
            .await;
        settle().await;
        assert!(s.observed("globex").await.is_empty());
    }
}

/// An agent that meets a new action type every few seconds gets no more new suggestions an
/// hour than it may propose itself: the approvers' inbox is not its to fill.
#[tokio::test]
async fn an_agent_gets_no_more_suggestions_an_hour_than_it_may_propose() {
    for place in places("obs").await {
        let limits = Limits {
            proposal_rate_limit: 2,
            ..Limits::default()
        };
        let s = server_with(&place, limits).await;
        let acme = s.controller("acme").await;
        for kind in ["crm.export", "crm.delete", "crm.merge"] {
            for account in ["A-1", "A-2", "A-3"] {
                let action = json!({"type": kind, "agent": "support-bot",
                                    "target": {"type": "account", "id": account}});
                s.decide(&acme, action).await;
            }
            // One kind at a time, so which two are kept is the order they came in.
            if kind != "crm.merge" {
                s.eventually("acme", kind, |f| f.iter().any(|p| p.subject.contains(kind)))
                    .await;
            }
        }
        settle().await;
        settle().await;
        let found = s.observed("acme").await;
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|p| !p.subject.contains("crm.merge")),
            "{found:?}"
        );
    }
}

#[tokio::test]
async fn two_replicas_observing_the_same_friction_keep_one_suggestion() {
    for place in places("obs").await {
        let a = server(&place).await;
        let b = server(&place).await;
        let controller = a.controller("acme").await;
        let (x, y) = tokio::join!(
            a.decide(&controller, export("support-bot", "A-1")),
            b.decide(&controller, export("support-bot", "A-2")),
        );
        assert_eq!((x.1.as_str(), y.1.as_str()), ("deny", "deny"));
        tokio::join!(
            a.decide(&controller, export("support-bot", "A-3")),
            b.decide(&controller, export("support-bot", "A-4")),
        );
        let found = a
            .eventually("acme", "one suggestion with 4 hits", |f| {
                f.iter().any(|p| p.hits == 4)
            })
            .await;
        settle().await;
        let found_after = a.observed("acme").await;
        assert_eq!(found_after.len(), 1, "{found:?}");
        assert_eq!(found_after[0].hits, 4);
        assert_eq!(evidence_of(&found_after[0]).len(), 4);
    }
}

#[tokio::test]
async fn repeated_human_approvals_become_one_suggestion() {
    for place in places("obs").await {
        let s = server(&place).await;
        let controller = s.controller("acme").await;
        let finance = s.approver("acme", "fran", "finance").await;
        for n in 1..=3 {
            let (status, body) = s
                .call(
                    Method::POST,
                    "/v1/decisions",
                    &controller,
                    json!({"type": "ticket.refund", "agent": "support-bot",
                           "target": {"type": "ticket", "id": format!("T-{n}")}}),
                )
                .await;
            assert_eq!(body["effect"], "require_approval", "{body}");
            assert_eq!(status, StatusCode::OK);
            let approval = body["approval"]["id"].as_str().unwrap().to_owned();
            let (status, approved) = s
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{approval}/approve"),
                    &finance,
                    json!({}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{approved}");
        }
        let found = s
            .eventually("acme", "one suggestion with 3 hits", |f| {
                f.len() == 1 && f[0].hits == 3
            })
            .await;
        let p = &found[0];
        assert_eq!(p.status, "needs_human");
        let key: Value = serde_json::from_str(p.observed_key.as_deref().unwrap()).unwrap();
        assert_eq!(
            key,
            json!([
                "approved",
                "support-bot",
                "ticket.refund",
                "ticket",
                "refunds-need-approval"
            ])
        );
        let review: Value = serde_json::from_str(&p.review).unwrap();
        assert_eq!(review["classification"], "broadening", "{review}");
        assert_eq!(evidence_of(p).len(), 3);
    }
}
