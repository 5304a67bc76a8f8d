//! The HTTP API end to end through the router (`oneshot`, no socket), on SQLite and, when
//! `WARDEN_TEST_DATABASE_URL` is set, on PostgreSQL in a schema of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers, not shipped code

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tower::ServiceExt;
use warden_server::audit::{AuditKey, AuditWriter};
use warden_server::keys::{self, KeySpec, Role};
use warden_server::metrics::Metrics;
use warden_server::policies::Policies;
use warden_server::{AppState, Limits, app};
use warden_store::{
    Append, Appended, Backend, Event, EventFilter, KeyRecord, NewKey, PermitConsumed, PermitUse,
    PurgeReport, Store, StoreError, StoredDecision, VerifyReport, kind,
};

const POLICY: &str = r#"
version: 1.0.0
default: deny
agents:
  "support-*": {tier: sandbox}
rules:
  - id: low-confidence-resolve
    actions: [ticket.resolve]
    when: action.confidence < 0.85
    effect: deny
    reason: "confidence {{action.confidence}} is below 0.85"
  - id: support-may-act
    actions: ["ticket.*", email.send]
    effect: allow
    reason: "support may work tickets for {{context.user.email}}"
  - id: card-check
    actions: [payment.refund]
    when: action.payload.card.size() > 0 && action.payload.amount < 100
    effect: allow
audit:
  keep: [action.target.id, context.user]
  redact: [context.user.email]
"#;

/// One server over a fresh store.
struct Server {
    app: Router,
    store: Arc<dyn Store>,
    policies_dir: tempfile::TempDir,
    state: AppState,
    admin: String,
    operator: String,
    /// A controller that names no agent.
    controller: String,
    /// A controller for agents `support-*`: every action must name one.
    support: String,
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        self.call_typed(method, path, token, "application/json", body)
            .await
    }

    async fn call_typed(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .header("content-type", content_type)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn decide(&self, body: Value) -> (StatusCode, Value) {
        self.decide_as(&self.controller, body).await
    }

    async fn decide_as(&self, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/v1/decisions", Some(key), &body.to_string())
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

    async fn key(&self, tenant: &str, roles: Vec<Role>, agent: Option<&str>) -> String {
        let spec = KeySpec {
            tenant: tenant.into(),
            roles,
            agent: agent.map(str::to_owned),
            ..KeySpec::default()
        };
        keys::create(self.store.as_ref(), spec, "test", 1)
            .await
            .unwrap()
            .0
            .token
    }
}

/// A store under test and the directory its SQLite file lives in.
struct Db {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

/// Every store the tests run on: a SQLite file (chain appends on the appender thread) and
/// SQLite in memory (appends through sqlx) always, PostgreSQL when configured.
async fn stores() -> Vec<Db> {
    let dir = tempfile::tempdir().unwrap();
    let file = warden_store::open(&dir.path().join("warden.db").display().to_string())
        .await
        .unwrap();
    let mut stores = vec![
        Db {
            store: file,
            _dir: Some(dir),
        },
        Db {
            store: warden_store::open("sqlite::memory:").await.unwrap(),
            _dir: None,
        },
    ];
    match std::env::var("WARDEN_TEST_DATABASE_URL") {
        Ok(url) => {
            let schema = format!(
                "api_{}",
                warden_server::ids::random_base32(12).to_lowercase()
            );
            stores.push(Db {
                store: warden_store::open_postgres_in_schema(&url, &schema)
                    .await
                    .unwrap(),
                _dir: None,
            });
        }
        Err(_) => eprintln!("SKIPPED (PostgreSQL part): WARDEN_TEST_DATABASE_URL is not set"),
    }
    for db in &stores {
        db.store.migrate().await.unwrap();
    }
    stores
}

async fn server(store: Arc<dyn Store>) -> Server {
    server_with(
        store,
        POLICY,
        Limits {
            key_cache_ttl: Duration::ZERO,
            ..Limits::default()
        },
    )
    .await
}

async fn server_with(store: Arc<dyn Store>, policy: &str, limits: Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("default.yaml"), policy).unwrap();
    let policies = Arc::new(
        Policies::open(Arc::clone(&store), dir.path())
            .await
            .unwrap(),
    );
    let metrics = Arc::new(Metrics::default());
    let (audit, _task) = AuditWriter::start(Arc::clone(&store), Arc::clone(&metrics));
    let key = AuditKey::from_bytes(&[42u8; 32]).unwrap();
    let state = AppState::new(Arc::clone(&store), policies, audit, key, metrics, limits);
    let mut s = Server {
        app: app(state.clone()),
        state,
        store,
        policies_dir: dir,
        admin: String::new(),
        operator: String::new(),
        controller: String::new(),
        support: String::new(),
    };
    s.admin = s.key("acme", vec![Role::Admin], None).await;
    s.operator = s.key("_system", vec![Role::Operator], None).await;
    s.controller = s.key("acme", vec![Role::Controller], None).await;
    s.support = s
        .key("acme", vec![Role::Controller], Some("support-*"))
        .await;
    s
}

#[tokio::test]
async fn a_decision_is_answered_audited_and_readable_again() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let (status, body) = s
            .decide_as(
                &s.support,
                json!({
                    "type": "ticket.resolve", "confidence": 0.7, "agent": "support-bot",
                    "target": {"type": "ticket", "id": "T-1042"},
                    "payload": {"resolution": "refund"},
                    "context": {"user": {"email": "ann@example.com", "role": "agent"}}
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["effect"], "deny");
        assert_eq!(body["reasons"][0]["rule"], "low-confidence-resolve");
        assert_eq!(
            body["reasons"][0]["message"],
            "confidence 0.7 is below 0.85"
        );
        assert_eq!(body["policy_version"], "1.0.0");
        let id = body["decision_id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 26);

        let events = s.events(kind::DECISION).await;
        assert_eq!(events.len(), 1);
        let e = &events[0].event;
        assert_eq!(e.id, id);
        assert_eq!(e.tenant, "acme", "the tenant comes from the key");
        assert_eq!(e.agent.as_deref(), Some("support-bot"));
        assert_eq!(e.effect.as_deref(), Some("deny"));
        assert_eq!(e.rule_ids, ["low-confidence-resolve", "support-may-act"]);
        assert_eq!(e.confidence_initial, Some(0.7));
        assert!(
            e.payload_digest
                .as_deref()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        assert!(e.context_digest.is_some());
        assert_eq!(
            e.kept,
            json!({"action.target.id": "T-1042",
                   "context.user": {"email": "[redacted]", "role": "agent"}})
        );
        // The redacted email is masked in the recorded reasons too, but not in the answer.
        assert_eq!(e.reasons[1], "support may work tickets for [redacted]");
        assert_eq!(
            body["reasons"][1]["message"],
            "support may work tickets for ann@example.com"
        );

        let (status, again) = s
            .call(
                Method::GET,
                &format!("/v1/decisions/{id}"),
                Some(&s.controller),
                "",
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["decision_id"], id.as_str());
        assert_eq!(again["effect"], "deny");

        let other = s.key("other", vec![Role::Controller], None).await;
        let (status, body) = s
            .call(
                Method::GET,
                &format!("/v1/decisions/{id}"),
                Some(&other),
                "",
            )
            .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "another tenant cannot read it: {body}"
        );
        assert_eq!(body["error"], "not_found");
    }
}

#[tokio::test]
async fn a_repeated_id_returns_the_first_decision_and_writes_nothing_new() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let action = json!({"id": "retry-1", "type": "ticket.update", "agent": "support-bot"});
        let (_, first) = s.decide_as(&s.support, action.clone()).await;
        // The same action with its keys in another order and other spacing is the same.
        let reordered = r#"{ "agent" : "support-bot", "type": "ticket.update", "id": "retry-1" }"#;
        let (status, second) = s
            .call(Method::POST, "/v1/decisions", Some(&s.support), reordered)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["decision_id"], second["decision_id"]);
        assert_eq!(first["effect"], "allow");
        assert!(first.get("replayed").is_none(), "{first}");
        assert_eq!(second["replayed"], true);
        assert_eq!(s.events(kind::DECISION).await.len(), 1);

        // Concurrent repeats all get the one decision.
        let answers = futures_join(&s, &s.support, action.clone(), 8).await;
        assert!(
            answers
                .iter()
                .all(|a| a["decision_id"] == first["decision_id"])
        );
        assert_eq!(s.events(kind::DECISION).await.len(), 1);

        // The key is per tenant: another tenant's same id is a new decision.
        let other = s.key("other", vec![Role::Controller], None).await;
        let (_, theirs) = s
            .call(
                Method::POST,
                "/v1/decisions",
                Some(&other),
                &json!({"id": "retry-1", "type": "ticket.update"}).to_string(),
            )
            .await;
        assert_ne!(theirs["decision_id"], first["decision_id"]);
    }
}

async fn futures_join(s: &Server, key: &str, action: Value, n: usize) -> Vec<Value> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let app = s.app.clone();
        let token = key.to_owned();
        let body = action.to_string();
        handles.push(tokio::spawn(async move {
            let request = Request::post("/v1/decisions")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_records_nothing() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let cases: Vec<(String, StatusCode, &str, &str)> = vec![
            ("{".into(), StatusCode::BAD_REQUEST, "invalid_action", "EOF"),
            (
                "[]".into(),
                StatusCode::BAD_REQUEST,
                "invalid_action",
                "an action is a JSON object, not an array",
            ),
            (
                json!({"type": "ticket.resolve", "tenant": "x"}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_action",
                "unknown field `tenant`",
            ),
            (
                json!({"type": 5}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `type`: expected a string, got a number",
            ),
            (
                json!({"type": "x.y", "usage": {"tokens": "many"}}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `usage.tokens`: expected a whole number, got a string",
            ),
            (
                json!({"type": "x.y", "target": ["ticket", "T-1"]}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `target`: expected an object, got an array",
            ),
            (
                json!({"type": "x.y", "context": [1, 2]}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `context`: expected an object, got an array",
            ),
            (
                json!({"type": ""}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `type`: must not be empty",
            ),
            (
                json!({"type": "x.y", "agent": "support-x\n99999 allow FORGED-LINE"}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `agent`: holds the non-printable character U+000A",
            ),
            (
                json!({"type": "x.y", "on_behalf_of": "user\u{202e}evil"}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `on_behalf_of`: holds the non-printable character U+202E",
            ),
            (
                json!({"type": "x.y", "mode": "m".repeat(65)}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `mode`: is longer than 64 characters",
            ),
            (
                json!({"type": "x.y", "target": {"id": "t".repeat(513)}}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `target.id`: is longer than 512 characters",
            ),
            (
                json!({"type": "x.y", "workflow": "w".repeat(201)}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "invalid `workflow`: is longer than 200 characters",
            ),
            (
                r#"{"type": "x.y", "context": {"user": {"role": "restricted", "role": "agent"}}}"#
                    .into(),
                StatusCode::BAD_REQUEST,
                "duplicate_key",
                "duplicate key at `context.user.role`",
            ),
            (
                r#"{"type": "x.y", "payload": {"items": [{"a": 1}, {"b": 1, "b": 2}]}}"#.into(),
                StatusCode::BAD_REQUEST,
                "duplicate_key",
                "duplicate key at `payload.items[1].b`",
            ),
            (
                r#"{"type": "x.y", "type": "ticket.update"}"#.into(),
                StatusCode::BAD_REQUEST,
                "duplicate_key",
                "duplicate key at `type`",
            ),
            (
                json!({"confidence": 0.5}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_action",
                "missing field `type`",
            ),
            (
                json!({"type": "ticket.resolve", "confidence": 1.5}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "`confidence`",
            ),
            (
                json!({"type": "Not A Name"}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "`type`",
            ),
            (
                json!({"type": "ticket.resolve", "context": deep})
                    .to_string()
                    .replace(&format!("\"{deep}\""), &deep),
                StatusCode::BAD_REQUEST,
                "invalid_action",
                "deeper than 64",
            ),
            (
                json!({"type": "x.y", "id": "k".repeat(513)}).to_string(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "`id`",
            ),
        ];
        for (body, status, code, detail) in cases {
            let (got, answer) = s
                .call(Method::POST, "/v1/decisions", Some(&s.controller), &body)
                .await;
            assert_eq!(got, status, "{body}: {answer}");
            assert_eq!(answer["error"], code, "{body}: {answer}");
            let text = answer["detail"].as_str().unwrap();
            assert!(text.contains(detail), "{body}: {text}");
            for internal in [
                "serde",
                "warden_",
                "struct",
                "RawAction",
                "u64",
                "f64",
                "sequence",
            ] {
                assert!(!text.contains(internal), "{body}: {text}");
            }
        }

        // Only JSON is read as JSON.
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let mut request = Request::post("/v1/decisions")
                .header("authorization", format!("Bearer {}", s.controller));
            if let Some(t) = content_type {
                request = request.header("content-type", t);
            }
            let request = request
                .body(Body::from(r#"{"type":"ticket.update"}"#))
                .unwrap();
            let response = s.app.clone().oneshot(request).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
            let body: Value =
                serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            assert_eq!(body["error"], "unsupported_media_type");
        }

        // Invalid UTF-8.
        let request = Request::post("/v1/decisions")
            .header("authorization", format!("Bearer {}", s.controller))
            .header("content-type", "application/json")
            .body(Body::from(vec![b'{', 0xff, b'}']))
            .unwrap();
        let response = s.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert!(body["detail"].as_str().unwrap().contains("UTF-8"), "{body}");

        // Over the body limit.
        let big =
            json!({"type": "x.y", "payload": {"blob": "a".repeat(1024 * 1024 + 10)}}).to_string();
        let (status, body) = s
            .call(Method::POST, "/v1/decisions", Some(&s.controller), &big)
            .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "body_too_large");

        assert!(
            s.events(kind::DECISION).await.is_empty(),
            "nothing was decided, nothing recorded"
        );
    }
}

#[tokio::test]
async fn keys_are_checked_and_failures_audited() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let action = json!({"type": "ticket.update"}).to_string();
        let bad_secret = format!(
            "{}{}",
            &s.controller[..s.controller.len() - 1],
            if s.controller.ends_with('0') {
                "1"
            } else {
                "0"
            }
        );
        for token in [
            None,
            Some("nonsense"),
            Some(bad_secret.as_str()),
            Some(
                "wdn_aaaaaaaaaaaa_0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ] {
            let (status, body) = s.call(Method::POST, "/v1/decisions", token, &action).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
            assert_eq!(body["error"], "unauthorized");
        }
        let failures = s.events(kind::AUTH_FAILURE).await;
        let reasons: Vec<&str> = failures
            .iter()
            .map(|e| e.event.detail["reason"].as_str().unwrap())
            .collect();
        assert_eq!(
            reasons,
            ["missing", "malformed", "wrong_secret", "unknown_key"]
        );
        assert_eq!(
            failures[2].event.tenant, "acme",
            "a known key's failure is its tenant's"
        );
        for e in &failures {
            assert!(
                !e.event.detail.to_string().contains(&s.controller[17..]),
                "no secret in the log"
            );
        }

        // Wrong role: 403 with the error shape.
        let (status, body) = s
            .call(Method::POST, "/v1/decisions", Some(&s.admin), &action)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "forbidden");

        // The controller may name only agents its pattern allows, and must name one.
        let (status, _) = s
            .decide_as(
                &s.support,
                json!({"type": "ticket.update", "agent": "support-bot"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = s
            .decide_as(
                &s.support,
                json!({"type": "ticket.update", "agent": "infra-bot"}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, body) = s
            .decide_as(&s.support, json!({"type": "ticket.update"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "agent_required");
        let (status, _) = s
            .decide(json!({"type": "ticket.update", "agent": "support-bot"}))
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "a key without a pattern names no agent"
        );

        // A revoked key stops working.
        let id = keys::parse_token(&s.controller).unwrap().0.to_owned();
        assert!(s.store.revoke_key(&id, 2).await.unwrap());
        let (status, _) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            s.events(kind::AUTH_FAILURE)
                .await
                .last()
                .unwrap()
                .event
                .detail["reason"],
            "revoked"
        );
    }
}

#[tokio::test]
async fn evaluation_errors_fail_closed_without_internal_detail() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let (status, body) = s
            .decide(json!({"type": "payment.refund", "payload": {"amount": 5}}))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["effect"], "deny");
        assert_eq!(body["reasons"][0]["code"], "evaluation_error");
        let message = body["reasons"][0]["message"].as_str().unwrap();
        assert!(
            !message.contains("`card`") && !message.contains("no such"),
            "no internal detail: {message}"
        );
        let e = &s.events(kind::DECISION).await[0].event;
        assert_eq!(e.effect.as_deref(), Some("deny"));
        assert_eq!(e.detail["evaluation_error"]["rule"], "card-check");
    }
}

#[tokio::test]
async fn outcomes_are_recorded_against_their_decision() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let (_, decision) = s.decide(json!({"type": "ticket.update"})).await;
        let id = decision["decision_id"].as_str().unwrap();
        let path = format!("/v1/decisions/{id}/outcome");
        let (status, body) = s
            .call(
                Method::POST,
                &path,
                Some(&s.controller),
                r#"{"status": "failed", "error_code": "smtp_timeout"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "failed");
        let outcomes = s.events(kind::OUTCOME).await;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].event.decision_id.as_deref(), Some(id));
        assert_eq!(outcomes[0].event.detail["error_code"], "smtp_timeout");
        assert_eq!(outcomes[0].event.effect.as_deref(), Some("allow"));

        for (body, code) in [
            (r#"{"status": "done"}"#, "invalid_body"),
            (
                r#"{"status": "failed", "error_code": "has spaces"}"#,
                "invalid_field",
            ),
            (r#"{"status": "failed", "extra": 1}"#, "invalid_body"),
        ] {
            let (status, answer) = s.call(Method::POST, &path, Some(&s.controller), body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(answer["error"], code, "{answer}");
        }
        let (status, _) = s
            .call(
                Method::POST,
                "/v1/decisions/nope/outcome",
                Some(&s.controller),
                r#"{"status": "executed"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            s.events(kind::OUTCOME).await.len(),
            1,
            "refused outcomes record nothing"
        );
    }
}

#[tokio::test]
async fn a_reload_swaps_good_policies_and_refuses_bad_ones() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let path = s.policies_dir.path().join("default.yaml");
        std::fs::write(&path, POLICY.replace("version: 1.0.0", "version: 1.1.0")).unwrap();
        let (status, body) = s
            .call(Method::POST, "/v1/policy/reload", Some(&s.operator), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["policies"][0]["version"], "1.1.0");
        let (_, d) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(d["policy_version"], "1.1.0");

        std::fs::write(&path, "version: 1.2.0\ndefault: alow\n").unwrap();
        let (status, body) = s
            .call(Method::POST, "/v1/policy/reload", Some(&s.operator), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "partial");
        assert_eq!(body["policies"][0]["outcome"], "refused");
        assert_eq!(body["policies"][0]["version"], "1.1.0");
        assert!(
            body["policies"][0]["problems"][0]
                .as_str()
                .unwrap()
                .starts_with("default.yaml:2:"),
            "{body}"
        );
        let (_, d) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(
            d["policy_version"], "1.1.0",
            "the old policy stays in force"
        );
        // An unchanged file publishes nothing; an edit that keeps its version is refused.
        std::fs::write(&path, POLICY.replace("version: 1.0.0", "version: 1.1.0")).unwrap();
        let (_, body) = s
            .call(Method::POST, "/v1/policy/reload", Some(&s.operator), "")
            .await;
        assert_eq!(body["policies"][0]["outcome"], "unchanged", "{body}");
        std::fs::write(
            &path,
            POLICY.replace("version: 1.0.0", "version: 1.1.0") + "\n# edited\n",
        )
        .unwrap();
        let (_, body) = s
            .call(Method::POST, "/v1/policy/reload", Some(&s.operator), "")
            .await;
        assert_eq!(body["policies"][0]["outcome"], "refused", "{body}");
        assert!(
            body["policies"][0]["problems"][0]
                .as_str()
                .unwrap()
                .contains("version `1.1.0` is not greater than the active version `1.1.0`"),
            "{body}"
        );

        let (status, _) = s
            .call(Method::POST, "/v1/policy/reload", Some(&s.controller), "")
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(s.events(kind::POLICY_RELOADED).await.len(), 4);
        // The seed and the one publish are versions, each with its event.
        let published = s.events(kind::POLICY_PUBLISHED).await;
        assert_eq!(published.len(), 2);
        assert_eq!(published[1].event.detail["cause"], "reload");
        assert_eq!(
            published[1].event.policy_hash.as_deref(),
            d["policy_hash"].as_str()
        );
        // The decision's event names the same version and hash.
        let decisions = s.events(kind::DECISION).await;
        let last = &decisions.last().unwrap().event;
        assert_eq!(last.policy_version.as_deref(), Some("1.1.0"));
        assert_eq!(last.policy_hash, published[1].event.policy_hash);
    }
}

#[tokio::test]
async fn operations_routes_answer_without_a_key_and_metrics_need_an_operator() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        s.decide(json!({"type": "ticket.update"})).await;
        let (status, body) = s.call(Method::GET, "/healthz", None, "").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ok"))
        );
        let (status, body) = s.call(Method::GET, "/readyz", None, "").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ready"))
        );
        let (status, metrics) = s.call(Method::GET, "/metrics", Some(&s.operator), "").await;
        assert_eq!(status, StatusCode::OK);
        let metrics = metrics.as_str().unwrap();
        assert!(
            metrics.contains(r#"warden_decisions_total{tenant="acme",effect="allow"} 1"#),
            "{metrics}"
        );
        assert!(metrics.contains("warden_decision_duration_seconds_count 1"));
        assert!(metrics.contains("warden_audit_batch_size_count"));
        let (status, spec) = s.call(Method::GET, "/openapi.json", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(spec["paths"]["/v1/decisions"]["post"].is_object());
        assert!(spec["components"]["schemas"]["DecisionBody"]["properties"]["effect"].is_object());
        assert!(
            spec["components"]["schemas"]["ActionRequest"]["properties"]["confidence"].is_object()
        );
        // Every `$ref` names a schema the document holds: a client generated from it (or
        // checked against it) must not meet a dangling reference.
        fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        out.push(target);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&spec, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let name = target.strip_prefix("#/components/schemas/").unwrap();
            assert!(
                spec["components"]["schemas"][name].is_object(),
                "`{target}` names no schema"
            );
        }

        let (status, body) = s.call(Method::GET, "/nope", None, "").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, body) = s
            .call(Method::DELETE, "/v1/decisions", Some(&s.controller), "")
            .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"], "method_not_allowed");
    }
}

#[tokio::test]
async fn admins_query_their_tenant_and_verify_the_chain() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        s.decide(json!({"type": "ticket.update"})).await;
        let (status, body) = s
            .call(Method::GET, "/v1/audit?kind=decision", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["events"].as_array().unwrap().len(), 1);
        assert_eq!(body["events"][0]["tenant"], "acme");
        let (status, body) = s
            .call(Method::GET, "/v1/audit?bogus=1", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = s
            .call(Method::GET, "/v1/audit/verify", Some(&s.admin), "")
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the chain spans tenants: {body}"
        );
        let (status, body) = s
            .call(Method::GET, "/v1/audit/verify", Some(&s.operator), "")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["intact"], true);
        assert!(body["events_checked"].as_u64().unwrap() >= 3);
    }
}

/// A second replica on the same database sees the first one's decisions and keys.
#[tokio::test]
async fn a_second_replica_shares_decisions_and_idempotency() {
    let Some((first, second)) = pg_replicas("replica").await else {
        return;
    };
    let a = server(first).await;
    let mut b = server(second).await;
    b.controller = a.controller.clone();
    let (_, made) = a
        .decide(json!({"id": "k-1", "type": "ticket.update"}))
        .await;
    let id = made["decision_id"].as_str().unwrap();
    let (status, seen) = b
        .call(
            Method::GET,
            &format!("/v1/decisions/{id}"),
            Some(&b.controller),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["decision_id"], id);
    let (_, again) = b
        .decide(json!({"id": "k-1", "type": "ticket.update"}))
        .await;
    assert_eq!(again["decision_id"], id);
    let report = b.store.verify().await.unwrap();
    assert!(report.first_broken.is_none());
}

/// Two stores on one fresh, migrated PostgreSQL schema named after `prefix`: two replicas.
/// `None`, said loudly, when `WARDEN_TEST_DATABASE_URL` is not set.
async fn pg_replicas(prefix: &str) -> Option<(Arc<dyn Store>, Arc<dyn Store>)> {
    let Ok(url) = std::env::var("WARDEN_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: WARDEN_TEST_DATABASE_URL is not set");
        return None;
    };
    let schema = format!(
        "{prefix}_{}",
        warden_server::ids::random_base32(12).to_lowercase()
    );
    let first = warden_store::open_postgres_in_schema(&url, &schema)
        .await
        .unwrap();
    first.migrate().await.unwrap();
    let second = warden_store::open_postgres_in_schema(&url, &schema)
        .await
        .unwrap();
    Some((first, second))
}

/// A store whose appends fail on demand, standing in for a full disk or a lost database.
#[derive(Debug)]
struct Breakable {
    inner: Arc<dyn Store>,
    broken: AtomicBool,
    /// While set, appends wait for a permit of `gate`: a store that has stalled.
    stalled: AtomicBool,
    gate: tokio::sync::Semaphore,
}

impl Breakable {
    fn over(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            broken: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
        })
    }
}

#[async_trait]
impl Store for Breakable {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
    async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        self.inner.migrate().await
    }
    async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        self.inner.pending_migrations().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn probe_write(&self, now_ms: i64) -> Result<String, StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        self.inner.probe_write(now_ms).await
    }
    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>, StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        if self.stalled.load(Ordering::SeqCst) {
            let _permit = self.gate.acquire().await;
        }
        self.inner.append(batch).await
    }
    async fn consume_permit_use(&self, permit: PermitUse) -> Result<PermitConsumed, StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        self.inner.consume_permit_use(permit).await
    }
    async fn decision(&self, tenant: &str, id: &str) -> Result<Option<StoredDecision>, StoreError> {
        self.inner.decision(tenant, id).await
    }
    async fn decision_by_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<StoredDecision>, StoreError> {
        self.inner.decision_by_key(tenant, key).await
    }
    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        self.inner.events(filter).await
    }
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.inner.verify().await
    }
    async fn purge(&self, older_than_ms: i64, now_ms: i64) -> Result<PurgeReport, StoreError> {
        self.inner.purge(older_than_ms, now_ms).await
    }
    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        self.inner.create_key(key).await
    }
    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.key(id).await
    }
    async fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.inner.revoke_key(id, now_ms).await
    }
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.keys().await
    }
    async fn counters(
        &self,
        filter: &warden_store::CounterFilter,
    ) -> Result<Vec<warden_store::CounterRow>, StoreError> {
        self.inner.counters(filter).await
    }
    async fn prune_counters(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_counters(now_ms).await
    }
    async fn approval(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<warden_store::ApprovalRecord>, StoreError> {
        self.inner.approval(tenant, id).await
    }
    async fn approvals(
        &self,
        filter: &warden_store::ApprovalFilter,
    ) -> Result<Vec<warden_store::ApprovalRecord>, StoreError> {
        self.inner.approvals(filter).await
    }
    async fn expired_approvals(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.expired_approvals(now_ms, limit).await
    }
    async fn update_approval(
        &self,
        tenant: &str,
        id: &str,
        decide: warden_store::ApprovalDecider,
    ) -> Result<warden_store::ApprovalChanged, StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        self.inner.update_approval(tenant, id, decide).await
    }
    async fn approval_signals(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<warden_store::ApprovalSignal>, StoreError> {
        self.inner.approval_signals().await
    }
    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<warden_store::OutboxEntry>, StoreError> {
        self.inner.claim_webhooks(now_ms, lease_ms, limit).await
    }
    async fn webhook_attempted(
        &self,
        id: &str,
        now_ms: i64,
        error: Option<String>,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.inner
            .webhook_attempted(id, now_ms, error, retry_at_ms)
            .await
    }
    async fn publish_policy(
        &self,
        publish: warden_store::PolicyPublish,
    ) -> Result<warden_store::Published, StoreError> {
        self.inner.publish_policy(publish).await
    }
    async fn policy_heads(&self) -> Result<Vec<warden_store::PolicyHead>, StoreError> {
        self.inner.policy_heads().await
    }
    async fn policy(
        &self,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<warden_store::StoredPolicy>, StoreError> {
        self.inner.policy(tenant, revision).await
    }
    async fn policy_info(
        &self,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<warden_store::PolicyVersionInfo>, StoreError> {
        self.inner.policy_info(tenant, revision).await
    }
    async fn policy_versions(
        &self,
        tenant: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<warden_store::PolicyVersionInfo>, StoreError> {
        self.inner.policy_versions(tenant, before, limit).await
    }
    async fn policy_signals(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<warden_store::PolicySignal>, StoreError> {
        self.inner.policy_signals().await
    }
    async fn snapshots(
        &self,
        tenant: &str,
        since_ms: i64,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<warden_store::StoredSnapshot>, StoreError> {
        self.inner.snapshots(tenant, since_ms, after, limit).await
    }
    async fn clear_snapshots(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        self.inner.clear_snapshots(older_than_ms).await
    }
    async fn record_shadow_tally(
        &self,
        tenant: &str,
        revision: i64,
        replica: &str,
        tally: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .record_shadow_tally(tenant, revision, replica, tally, now_ms)
            .await
    }
    async fn shadow_tallies(&self, tenant: &str, revision: i64) -> Result<Vec<String>, StoreError> {
        self.inner.shadow_tallies(tenant, revision).await
    }
    async fn end_policy_shadow(
        &self,
        tenant: &str,
        event: warden_store::NewEvent,
    ) -> Result<Option<warden_store::PolicyVersionInfo>, StoreError> {
        self.inner.end_policy_shadow(tenant, event).await
    }
    async fn recent_snapshots(
        &self,
        tenant: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<warden_store::StoredSnapshot>, StoreError> {
        self.inner.recent_snapshots(tenant, since_ms, limit).await
    }
    async fn decision_events(
        &self,
        tenant: &str,
        decision_ids: &[String],
    ) -> Result<Vec<warden_store::Event>, StoreError> {
        self.inner.decision_events(tenant, decision_ids).await
    }
    async fn write_proposal(
        &self,
        write: warden_store::ProposalWrite,
    ) -> Result<warden_store::ProposalWritten, StoreError> {
        self.inner.write_proposal(write).await
    }
    async fn proposal(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<warden_store::ProposalRecord>, StoreError> {
        self.inner.proposal(tenant, id).await
    }
    async fn proposals(
        &self,
        filter: &warden_store::ProposalFilter,
    ) -> Result<Vec<warden_store::ProposalRecord>, StoreError> {
        self.inner.proposals(filter).await
    }
    async fn count_proposals(
        &self,
        tenant: &str,
        agent: &str,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        self.inner.count_proposals(tenant, agent, since_ms).await
    }
    async fn create_session(
        &self,
        session: &warden_store::SessionRecord,
    ) -> Result<(), StoreError> {
        self.inner.create_session(session).await
    }
    async fn session(
        &self,
        id_hash: &str,
    ) -> Result<Option<warden_store::SessionRecord>, StoreError> {
        self.inner.session(id_hash).await
    }
    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.inner.touch_session(id_hash, now_ms).await
    }
    async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        self.inner.delete_session(id_hash).await
    }
    async fn prune_sessions(&self, now_ms: i64, idle_before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_sessions(now_ms, idle_before_ms).await
    }
}

#[tokio::test]
async fn when_the_audit_write_fails_the_answer_is_a_deny_never_an_allow() {
    for Db { store: inner, _dir } in stores().await {
        let breakable = Breakable::over(inner);
        let s = server(breakable.clone()).await;
        let allowed = json!({"type": "ticket.update", "id": "after-outage"});
        breakable.broken.store(true, Ordering::SeqCst);
        let (status, body) = s.decide(allowed.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["effect"], "deny");
        assert_eq!(body["reasons"][0]["code"], "audit_unavailable");
        assert!(body["decision_id"].is_null());
        // Outcomes fail the same way, with the error shape.
        breakable.broken.store(false, Ordering::SeqCst);
        let (status, body) = s.decide(allowed.clone()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the retry with the same id is decided anew"
        );
        assert_eq!(body["effect"], "allow");
        assert_eq!(s.events(kind::DECISION).await.len(), 1);
    }
}

/// Breaking the real database, not a stand-in: the SQLite table the chain lives in is gone.
#[tokio::test]
async fn a_broken_sqlite_database_denies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let store = warden_store::open(path.to_str().unwrap()).await.unwrap();
    store.migrate().await.unwrap();
    let s = server(store).await;
    let (status, _) = s.decide(json!({"type": "ticket.update"})).await;
    assert_eq!(status, StatusCode::OK);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_events RENAME TO gone")
        .execute(&pool)
        .await
        .unwrap();
    let (status, body) = s.decide(json!({"type": "ticket.update"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["effect"], "deny");
    assert_eq!(body["reasons"][0]["code"], "audit_unavailable");
    let (_, metrics) = s.call(Method::GET, "/metrics", Some(&s.operator), "").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains(r#"warden_errors_total{code="audit_unavailable"} 1"#)
    );
}

#[tokio::test]
async fn no_policy_for_the_tenant_means_deny() {
    let store = warden_store::open("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("other.yaml"), POLICY).unwrap();
    let policies = Arc::new(
        Policies::open(Arc::clone(&store), dir.path())
            .await
            .unwrap(),
    );
    let metrics = Arc::new(Metrics::default());
    let (audit, _task) = AuditWriter::start(Arc::clone(&store), Arc::clone(&metrics));
    let state = AppState::new(
        Arc::clone(&store),
        policies,
        audit,
        AuditKey::from_bytes(&[1u8; 32]).unwrap(),
        metrics,
        Limits::default(),
    );
    let token = keys::create(
        store.as_ref(),
        KeySpec {
            tenant: "acme".into(),
            roles: vec![Role::Controller],
            ..KeySpec::default()
        },
        "t",
        1,
    )
    .await
    .unwrap()
    .0
    .token;
    let request = Request::post("/v1/decisions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(r#"{"type": "ticket.update"}"#))
        .unwrap();
    let response = app(state).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["effect"], "deny");
    assert_eq!(body["reasons"][0]["code"], "no_policy");
}

/// The in-flight bound covers the whole server, not each route: with one request stuck on
/// a stalled store, any other request is turned away at once.
#[tokio::test]
async fn requests_over_the_in_flight_bound_are_refused_at_once() {
    let store = warden_store::open("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let breakable = Breakable::over(store);
    let s = server_with(
        breakable.clone(),
        POLICY,
        Limits {
            max_in_flight: 1,
            key_cache_ttl: Duration::ZERO,
            ..Limits::default()
        },
    )
    .await;
    breakable.stalled.store(true, Ordering::SeqCst);
    let app = s.app.clone();
    let token = s.controller.clone();
    let stuck = tokio::spawn(async move {
        let request = Request::post("/v1/decisions")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"type": "ticket.update"}"#))
            .unwrap();
        app.oneshot(request).await.unwrap().status()
    });
    // Wait until the first request holds the only slot (it is waiting on the store).
    let mut refused = None;
    for _ in 0..100 {
        let (status, body) = s.call(Method::GET, "/healthz", None, "").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = refused.expect("a second request is refused while the first is in flight");
    assert_eq!(body["error"], "overloaded");
    breakable.stalled.store(false, Ordering::SeqCst);
    breakable.gate.add_permits(1);
    assert_eq!(stuck.await.unwrap(), StatusCode::OK);
    let (status, _) = s.call(Method::GET, "/healthz", None, "").await;
    assert_eq!(status, StatusCode::OK);
}

/// Issue 4 §1: an idempotency key is scoped to the key that asked and bound to the action.
/// Before, another controller key of the tenant got the first allow back for a refund.
#[tokio::test]
async fn an_idempotency_key_never_replays_a_different_action() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let (_, first) = s
            .decide_as(
                &s.support,
                json!({"id": "k1", "type": "ticket.get", "agent": "support-bot"}),
            )
            .await;
        assert_eq!(first["effect"], "allow");
        let refund = json!({"id": "k1", "type": "billing.refund", "agent": "triage-bot",
                            "payload": {"amount": 99999}});
        // Another key of the tenant: its own key space, so this is decided on its own.
        let other = s.key("acme", vec![Role::Controller], Some("*")).await;
        let (status, theirs) = s.decide_as(&other, refund.clone()).await;
        assert_eq!(status, StatusCode::OK, "{theirs}");
        assert_eq!(theirs["effect"], "deny");
        assert_ne!(theirs["decision_id"], first["decision_id"]);
        // The same key for another action: 409, never the first answer.
        let changed = json!({"id": "k1", "type": "ticket.get", "agent": "support-bot",
                             "payload": {"x": 1}});
        let (status, body) = s.decide_as(&s.support, changed).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], "idempotency_mismatch");
        assert!(body.get("decision_id").is_none());
        let mismatches = s.events(kind::IDEMPOTENCY_MISMATCH).await;
        assert_eq!(mismatches.len(), 1);
        let e = &mismatches[0].event;
        assert_eq!(e.tenant, "acme");
        assert_eq!(e.agent.as_deref(), Some("support-bot"));
        assert_eq!(e.action_type.as_deref(), Some("ticket.get"));
        assert_eq!(
            e.decision_id,
            first["decision_id"].as_str().map(str::to_owned)
        );
        let support_id = keys::parse_token(&s.support).unwrap().0;
        assert_eq!(e.detail["key_id"], support_id);
        assert!(
            e.payload_digest.is_none(),
            "no payload, not even its digest"
        );
        assert_eq!(
            s.events(kind::DECISION).await.len(),
            2,
            "nothing new was decided"
        );
        // The unchanged retry is still a replay, and counted.
        let (_, again) = s
            .decide_as(
                &s.support,
                json!({"id": "k1", "type": "ticket.get", "agent": "support-bot"}),
            )
            .await;
        assert_eq!(again["decision_id"], first["decision_id"]);
        assert_eq!(again["replayed"], true);
        let (_, metrics) = s.call(Method::GET, "/metrics", Some(&s.operator), "").await;
        assert!(
            metrics
                .as_str()
                .unwrap()
                .contains(r#"warden_decisions_replayed_total{tenant="acme"} 1"#),
            "{metrics}"
        );
    }
}

/// Issue 4 §2: a cache hit used to renew the entry, so a key used every 0.27 s stayed
/// valid forever after its revocation. Entries now expire a TTL after the store read.
#[tokio::test]
async fn a_revoked_key_stops_within_the_cache_ttl_however_often_it_is_used() {
    for Db { store, _dir } in stores().await {
        let ttl = Duration::from_millis(400);
        let s = server_with(
            store,
            POLICY,
            Limits {
                key_cache_ttl: ttl,
                ..Limits::default()
            },
        )
        .await;
        let (status, _) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(status, StatusCode::OK);
        // Revoked in the store, as another replica or `warden keys revoke` does.
        let id = keys::parse_token(&s.controller).unwrap().0.to_owned();
        assert!(s.store.revoke_key(&id, 2).await.unwrap());
        let revoked_at = std::time::Instant::now();
        let mut last_ok = None;
        while revoked_at.elapsed() < ttl * 4 {
            // When the request was sent: a loaded machine may answer it later.
            let sent = revoked_at.elapsed();
            let (status, _) = s.decide(json!({"type": "ticket.update"})).await;
            if status == StatusCode::OK {
                last_ok = Some(sent);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, _) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            last_ok.is_none_or(|at| at <= ttl),
            "answered {last_ok:?} after the revocation, with a {ttl:?} TTL"
        );
    }
}

/// Issue 4 §6: an agent key names one agent; one stored without is refused.
#[tokio::test]
async fn agent_keys_name_exactly_one_agent() {
    let store = warden_store::open("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let s = server(Arc::clone(&store)).await;
    for agent in [None, Some("support-*"), Some("bot?"), Some("")] {
        let spec = KeySpec {
            tenant: "acme".into(),
            roles: vec![Role::Agent],
            agent: agent.map(str::to_owned),
            ..KeySpec::default()
        };
        let error = keys::create(store.as_ref(), spec, "test", 1)
            .await
            .unwrap_err();
        assert!(
            matches!(error, keys::CreateKeyError::Invalid(_)),
            "{agent:?}: {error}"
        );
    }
    // Written around the check (an older version, by hand): refused when used.
    let issued = keys::issue(
        KeySpec {
            tenant: "acme".into(),
            roles: vec![Role::Agent],
            agent: Some("support-*".into()),
            ..KeySpec::default()
        },
        1,
    );
    store.create_key(issued.record.clone()).await.unwrap();
    let (status, _) = s
        .call(Method::GET, "/v1/decisions/x", Some(&issued.token), "")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let failures = s.events(kind::AUTH_FAILURE).await;
    assert_eq!(
        failures.last().unwrap().event.detail["reason"],
        "invalid_key"
    );
}

/// Issue 4 §5: a tenant's admin reloads and reads its own tenant only; the operator spans.
#[tokio::test]
async fn a_tenant_admin_is_not_the_operator() {
    let store = warden_store::open("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let s = server(store).await;
    let dir = s.policies_dir.path();
    std::fs::write(dir.join("acme.yaml"), POLICY.replace("1.0.0", "3.0.0")).unwrap();
    std::fs::write(dir.join("zeta.yaml"), "version: 9.0.0\ndefault: alow\n").unwrap();
    let (status, body) = s
        .call(Method::POST, "/v1/policy/reload", Some(&s.admin), "")
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "zeta's broken file does not block acme: {body}"
    );
    assert_eq!(
        body["policies"],
        json!([{"tenant": "acme", "version": "3.0.0", "revision": 1, "outcome": "published"}])
    );
    let (_, d) = s.decide(json!({"type": "ticket.update"})).await;
    assert_eq!(d["policy_version"], "3.0.0");
    // The operator reloads everything, and sees the problem, named relative to the folder.
    let (status, body) = s
        .call(Method::POST, "/v1/policy/reload", Some(&s.operator), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "partial");
    let zeta = body["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tenant"] == "zeta")
        .unwrap();
    assert_eq!(zeta["outcome"], "refused");
    let detail = zeta["problems"][0].as_str().unwrap();
    assert!(detail.contains("zeta.yaml:2:"), "{detail}");
    assert!(
        !detail.contains(&dir.display().to_string()),
        "no server path: {detail}"
    );
    // An admin's own broken file: its own error only.
    std::fs::write(dir.join("acme.yaml"), "version: 4.0.0\ndefault: alow\n").unwrap();
    let (status, body) = s
        .call(Method::POST, "/v1/policy/reload", Some(&s.admin), "")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("the previous policy stays in force: acme.yaml:2:"),
        "{detail}"
    );
    assert!(!detail.contains("zeta"), "{detail}");
    // Metrics and the whole chain are the operator's.
    for (path, key) in [("/metrics", &s.admin), ("/v1/audit/verify", &s.admin)] {
        let (status, _) = s.call(Method::GET, path, Some(key), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, _) = s.call(Method::GET, "/metrics", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The operator reads every tenant's events, or one tenant's.
    let (_, mine) = s.call(Method::GET, "/v1/audit", Some(&s.admin), "").await;
    assert!(
        mine["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant"] == "acme")
    );
    let (status, _) = s
        .call(Method::GET, "/v1/audit?tenant=_system", Some(&s.admin), "")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, all) = s
        .call(Method::GET, "/v1/audit", Some(&s.operator), "")
        .await;
    let tenants: std::collections::BTreeSet<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tenant"].as_str().unwrap())
        .collect();
    assert!(
        tenants.contains("acme") && tenants.contains("_system"),
        "{tenants:?}"
    );
}

/// Issue 4 §11: the tenant filter of the audit query, with two tenants' events present.
#[tokio::test]
async fn the_audit_query_shows_only_the_callers_tenant() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let theirs = s.key("zeta", vec![Role::Controller], None).await;
        s.decide(json!({"type": "ticket.update"})).await;
        s.decide_as(&theirs, json!({"type": "ticket.update"})).await;
        s.decide_as(&theirs, json!({"type": "ticket.update"})).await;
        let (_, body) = s
            .call(Method::GET, "/v1/audit?kind=decision", Some(&s.admin), "")
            .await;
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{body}");
        assert_eq!(events[0]["tenant"], "acme");
        let (_, body) = s
            .call(
                Method::GET,
                "/v1/audit?kind=decision&tenant=zeta",
                Some(&s.operator),
                "",
            )
            .await;
        assert_eq!(body["events"].as_array().unwrap().len(), 2);
    }
}

/// Issue 4 §9: bad filters and ids are 400s in the one error shape, naming the parameter.
#[tokio::test]
async fn every_error_is_json_and_names_what_was_wrong() {
    let store = warden_store::open("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let s = server(store).await;
    for (path, detail) in [
        ("/v1/audit?effect=foo", "`effect` must be"),
        ("/v1/audit?kind=nope", "`kind` must be one of"),
        (
            "/v1/audit?since_ms=abc",
            "`since_ms` must be a whole number",
        ),
        ("/v1/audit?limit=0", "`limit` must be"),
        (
            "/v1/audit?limit=5&limit=6",
            "`limit` is given more than once",
        ),
        ("/v1/audit?newest_first=yes", "`newest_first` must be"),
        ("/v1/audit?colour=red", "unknown parameter `colour`"),
        ("/v1/audit?agent=%ff", "not valid percent-encoded UTF-8"),
    ] {
        let (status, body) = s.call(Method::GET, path, Some(&s.admin), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"], "invalid_query", "{path}");
        assert!(
            body["detail"].as_str().unwrap().contains(detail),
            "{path}: {body}"
        );
    }
    for path in ["/v1/decisions/%ff%fe", "/v1/decisions/%00"] {
        let (status, body) = s.call(Method::GET, path, Some(&s.controller), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"], "invalid_id");
    }
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/decisions/x/outcome",
            Some(&s.controller),
            r#"{"status": 1}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        !detail.contains("OutcomeStatus") && !detail.contains("enum"),
        "{detail}"
    );
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/decisions/x/outcome",
            Some(&s.controller),
            r#"{"status": "failed", "status": "executed"}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("duplicate_key"))
    );
}

/// Issue 4 §8: while audit commits fail, the replica is not ready; it recovers when a
/// write on the audit path works again, without waiting for traffic.
#[tokio::test]
async fn readiness_fails_while_audit_writes_fail() {
    for Db { store: inner, _dir } in stores().await {
        let breakable = Breakable::over(inner);
        let s = server(breakable.clone()).await;
        let (status, _) = s.call(Method::GET, "/readyz", None, "").await;
        assert_eq!(status, StatusCode::OK);
        breakable.broken.store(true, Ordering::SeqCst);
        let (status, _) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, body) = s.call(Method::GET, "/readyz", None, "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "not_ready");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("audit writes fail")
        );
        breakable.broken.store(false, Ordering::SeqCst);
        let (status, body) = s.call(Method::GET, "/readyz", None, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// Issue 4 §7: bodies are read within a deadline and a shared byte budget, and a claimed
/// length over the limit is refused before anything is read.
#[tokio::test]
async fn bodies_have_a_deadline_a_budget_and_a_declared_limit() {
    let store = warden_store::open("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let s = server_with(
        store,
        POLICY,
        Limits {
            body_timeout: Duration::from_millis(200),
            body_budget_bytes: 100,
            key_cache_ttl: Duration::ZERO,
            ..Limits::default()
        },
    )
    .await;
    let post = |body: Body, length: Option<&str>| {
        let mut request = Request::post("/v1/decisions")
            .header("authorization", format!("Bearer {}", s.controller))
            .header("content-type", "application/json");
        if let Some(length) = length {
            request = request.header("content-length", length);
        }
        request.body(body).unwrap()
    };
    let answer = |response: axum::response::Response| async move {
        let status = response.status();
        let retry = response.headers().get("retry-after").cloned();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            retry,
        )
    };
    // A claimed 10 GB is refused at once, whatever follows.
    let (status, body, _) = answer(
        s.app
            .clone()
            .oneshot(post(Body::empty(), Some("10000000000")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    // A body that never finishes gets 408 after the deadline.
    let (status, body, _) = answer(
        s.app
            .clone()
            .oneshot(post(Body::new(Stalled), None))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::REQUEST_TIMEOUT, Some("body_timeout"))
    );
    // Over the byte budget: 503 with retry-after, never an allow.
    let big = json!({"type": "ticket.update", "payload": {"pad": "x".repeat(200)}}).to_string();
    let (status, body, retry) = answer(
        s.app
            .clone()
            .oneshot(post(Body::from(big), None))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded"))
    );
    assert_eq!(retry.unwrap(), "1");
    // A body in several frames is put together whole.
    let chunks = Chunks(vec![
        axum::body::Bytes::from_static(br#"{"type":"#),
        axum::body::Bytes::from_static(br#""ticket.update"}"#),
    ]);
    let (status, body, _) = answer(
        s.app
            .clone()
            .oneshot(post(Body::new(chunks), None))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Within it, fine; and the budget was given back.
    for _ in 0..3 {
        let (status, body, _) = answer(
            s.app
                .clone()
                .oneshot(post(Body::from(r#"{"type":"ticket.update"}"#), None))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(s.events(kind::DECISION).await.len(), 4);
}

/// A request body that arrives in the given frames.
struct Chunks(Vec<axum::body::Bytes>);

impl axum::body::HttpBody for Chunks {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let next = (!self.0.is_empty()).then(|| self.0.remove(0));
        std::task::Poll::Ready(next.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A request body whose bytes never arrive.
struct Stalled;

impl axum::body::HttpBody for Stalled {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// Issue 4 §7: a flood of bad keys is aggregated in the audit log, and a source over the
/// threshold is turned away with 429 before any lookup.
#[tokio::test]
async fn a_flood_of_bad_keys_is_aggregated_and_then_refused() {
    for Db { store, _dir } in stores().await {
        let s = server_with(
            store,
            POLICY,
            Limits {
                auth_failure_limit: 20,
                key_cache_ttl: Duration::ZERO,
                ..Limits::default()
            },
        )
        .await;
        let bogus = format!("wdn_aaaaaaaaaaaa_{}", "0".repeat(64));
        for _ in 0..20 {
            let (status, _) = s
                .call(
                    Method::POST,
                    "/v1/decisions",
                    Some(&bogus),
                    r#"{"type":"t.x"}"#,
                )
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        let (status, body) = s
            .call(
                Method::POST,
                "/v1/decisions",
                Some(&s.controller),
                r#"{"type":"t.x"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"], "too_many_failures");
        let failures = s.events(kind::AUTH_FAILURE).await;
        assert_eq!(
            failures.len(),
            1,
            "the first is audited at once, the rest wait"
        );
        assert_eq!(failures[0].event.detail["count"], 1);
        warden_server::auth::flush_failures(&s.state, true).await;
        let failures = s.events(kind::AUTH_FAILURE).await;
        assert_eq!(failures.len(), 2);
        let tally = &failures[1].event.detail;
        assert_eq!(tally["count"], 19, "{tally}");
        assert_eq!(tally["reason"], "unknown_key");
        assert!(tally["last_ms"].as_i64() >= tally["first_ms"].as_i64());
        // A new window lets the source back in.
        let (status, _) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// Issue 4 §4: `action.context` is `context`, so a kept subtree spelled one way is masked
/// by a redaction spelled the other; and a redacted fixed column holds a keyed reference.
#[tokio::test]
async fn redaction_holds_however_a_path_is_spelled_and_covers_the_fixed_columns() {
    for Db { store, _dir } in stores().await {
        let policy = r#"
version: 1.0.0
default: allow
audit:
  keep: [action.context.user]
  redact: [context.user.email, action.agent, action.target.id]
"#;
        let s = server_with(
            store,
            policy,
            Limits {
                key_cache_ttl: Duration::ZERO,
                ..Limits::default()
            },
        )
        .await;
        let action = |target: &str| {
            json!({"type": "ticket.update", "agent": "support-bot",
                   "target": {"type": "ticket", "id": target},
                   "context": {"user": {"email": "ann@example.com", "role": "agent"}}})
        };
        for target in ["T-1", "T-1", "T-2"] {
            let (status, body) = s.decide_as(&s.support, action(target)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let events = s.events(kind::DECISION).await;
        let e = &events[0].event;
        assert_eq!(
            e.kept,
            json!({"context.user": {"email": "[redacted]", "role": "agent"}})
        );
        let agent = e.agent.as_deref().unwrap();
        assert!(agent.starts_with("hmac-sha256:"), "{agent}");
        assert_eq!(events[1].event.agent, e.agent, "references still correlate");
        let target = e.target_id.as_deref().unwrap();
        assert!(target.starts_with("hmac-sha256:"), "{target}");
        assert_eq!(events[1].event.target_id, e.target_id);
        assert_ne!(events[2].event.target_id, e.target_id);
        assert_eq!(
            e.target_type.as_deref(),
            Some("ticket"),
            "not redacted, kept"
        );
        for event in &events {
            let text = format!("{:?}", event.event);
            assert!(
                !text.contains("ann@example.com") && !text.contains("support-bot"),
                "{text}"
            );
        }
    }
}

// ---- Permits (docs/PERMITS.md) ----

/// A policy whose allows carry permits: the default one, a short-lived one, a reusable one.
const PERMIT_POLICY: &str = r#"
version: 1.0.0
default: deny
rules:
  - id: tickets
    actions: ["ticket.*"]
    effect: allow
  - id: quick
    actions: [email.send]
    effect: allow
    permit: {expires_in: 1s}
  - id: reusable
    actions: [report.run]
    effect: allow
    permit: {expires_in: 1h, max_uses: 3}
  - id: held
    actions: [payment.send]
    effect: require_approval
"#;

async fn permit_server(store: Arc<dyn Store>) -> Server {
    server_with(
        store,
        PERMIT_POLICY,
        Limits {
            key_cache_ttl: Duration::ZERO,
            ..Limits::default()
        },
    )
    .await
}

impl Server {
    async fn verify_as(&self, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/permits/verify",
            Some(key),
            &body.to_string(),
        )
        .await
    }
}

fn resolve(payload: Value) -> Value {
    json!({"type": "ticket.resolve", "target": {"type": "ticket", "id": "T-1"}, "payload": payload})
}

#[tokio::test]
async fn an_allow_carries_a_permit_that_verifies_once_then_is_used_up() {
    for Db { store, _dir } in stores().await {
        let s = permit_server(store).await;
        let executor = s.key("acme", vec![Role::Executor], None).await;
        let payload = json!({"resolution": "refund", "amount": 12.5});
        let mut action = resolve(payload.clone());
        action["id"] = "idem-1".into();
        let (status, body) = s.decide(action.clone()).await;
        assert_eq!(
            (status, body["effect"].as_str()),
            (StatusCode::OK, Some("allow")),
            "{body}"
        );
        let permit = &body["permit"];
        assert_eq!(permit["max_uses"], 1);
        let token = permit["token"].as_str().unwrap().to_owned();
        assert_eq!(token.split('.').count(), 3);
        let expires = permit["expires_at"].as_str().unwrap();
        assert!(expires.ends_with('Z'), "{expires}");

        // The recorded decision and a replay carry the same permit.
        let id = body["decision_id"].as_str().unwrap();
        let (_, shown) = s
            .call(
                Method::GET,
                &format!("/v1/decisions/{id}"),
                Some(&s.controller),
                "",
            )
            .await;
        assert_eq!(shown["permit"], *permit);
        let (_, replayed) = s.decide(action).await;
        assert_eq!(replayed["replayed"], true);
        assert_eq!(replayed["permit"], *permit);

        let (status, first) = s
            .verify_as(&executor, json!({"permit": token, "payload": payload}))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            first,
            json!({"valid": true, "reason": "valid", "uses_left": 0})
        );
        let (_, second) = s
            .verify_as(&s.controller, json!({"permit": token, "payload": payload}))
            .await;
        assert_eq!(
            second,
            json!({"valid": false, "reason": "used_up", "uses_left": 0})
        );

        let events = s.events(kind::PERMIT_VERIFIED).await;
        assert_eq!(events.len(), 2);
        for (event, reason) in events.iter().zip(["valid", "used_up"]) {
            let e = &event.event;
            assert_eq!(e.tenant, "acme");
            assert_eq!(e.decision_id.as_deref(), Some(id));
            assert_eq!(e.detail["reason"], reason);
            assert!(e.detail["key_id"].is_string());
            assert!(e.detail["kid"].is_string());
            assert!(
                !e.detail.to_string().contains("refund"),
                "never the payload: {}",
                e.detail
            );
        }
        assert!(s.store.verify().await.unwrap().first_broken.is_none());

        // Denials and holds carry none.
        let (_, denied) = s.decide(json!({"type": "db.drop"})).await;
        assert_eq!(
            (denied["effect"].as_str(), &denied["permit"]),
            (Some("deny"), &Value::Null)
        );
        let (_, held) = s.decide(json!({"type": "payment.send"})).await;
        assert_eq!(
            (held["effect"].as_str(), &held["permit"]),
            (Some("require_approval"), &Value::Null)
        );
    }
}

#[tokio::test]
async fn the_payload_and_action_must_be_the_permitted_ones_in_any_spelling() {
    for Db { store, _dir } in stores().await {
        let s = permit_server(store).await;
        let (_, body) = s
            .decide(json!({"type": "report.run", "agent": null, "target": {"type": "report", "id": "R-9"},
                           "payload": {"b": [1.0, 1e21, "é\u{2028}"], "a": {"y": -0.0, "x": 0.1}}}))
            .await;
        assert_eq!(body["permit"]["max_uses"], 3, "{body}");
        let token = body["permit"]["token"].as_str().unwrap();
        let verify = |extra: &str| format!(r#"{{"permit": "{token}", {extra}}}"#);
        let call = async |text: String| {
            s.call(
                Method::POST,
                "/v1/permits/verify",
                Some(&s.controller),
                &text,
            )
            .await
        };
        // Another payload: refused, and no use is spent on it.
        let (_, swapped) = call(verify(
            r#""payload": {"b": [1, 1e21, "é"], "a": {"y": 0, "x": 0.1}}"#,
        ))
        .await;
        assert_eq!(
            swapped,
            json!({"valid": false, "reason": "payload_mismatch"})
        );
        let (_, missing) = call(verify(r#""payload": null"#)).await;
        assert_eq!(missing["reason"], "payload_mismatch");
        // The same payload, reordered, respaced and respelled (1.0 → 1, 1e21 → 1E+21).
        let (_, same) = call(verify(
            "\"payload\" :{ \"a\":{\"x\":0.1 ,\"y\":-0},\n \"b\":[1,1E+21,\"\\u00e9\\u2028\"]}",
        ))
        .await;
        assert_eq!(
            same,
            json!({"valid": true, "reason": "valid", "uses_left": 2})
        );
        let payload = r#""payload": {"a": {"x": 0.1, "y": 0}, "b": [1, 1e21, "é\u2028"]}"#;
        let (_, wrong_target) = call(verify(&format!(
            r#"{payload}, "action": {{"type": "report.run", "target": {{"type": "report", "id": "R-10"}}}}"#
        )))
        .await;
        assert_eq!(wrong_target["reason"], "action_mismatch");
        let (_, wrong_type) = call(verify(&format!(
            r#"{payload}, "action": {{"type": "report.delete"}}"#
        )))
        .await;
        assert_eq!(wrong_type["reason"], "action_mismatch");
        let (_, right) = call(verify(&format!(
            r#"{payload}, "action": {{"type": "report.run", "target": {{"type": "report", "id": "R-9"}}}}"#
        )))
        .await;
        assert_eq!(
            right,
            json!({"valid": true, "reason": "valid", "uses_left": 1})
        );
        let reasons: Vec<Value> = s
            .events(kind::PERMIT_VERIFIED)
            .await
            .iter()
            .map(|e| e.event.detail["reason"].clone())
            .collect();
        assert_eq!(
            reasons,
            [
                "payload_mismatch",
                "payload_mismatch",
                "valid",
                "action_mismatch",
                "action_mismatch",
                "valid"
            ]
        );
    }
}

#[tokio::test]
async fn tampered_foreign_and_expired_permits_are_refused() {
    for Db { store, _dir } in stores().await {
        let s = permit_server(store).await;
        let (_, body) = s.decide(resolve(json!({"x": 1}))).await;
        let token = body["permit"]["token"].as_str().unwrap().to_owned();
        let check = async |key: &str, token: &str| {
            s.verify_as(key, json!({"permit": token, "payload": {"x": 1}}))
                .await
                .1
        };
        // One changed character of the claims, and one of the signature.
        let dot = token.find('.').unwrap();
        for at in [dot + 5, token.len() - 3] {
            let mut bytes = token.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(
                check(&s.controller, &tampered).await["reason"],
                "bad_signature"
            );
        }
        assert_eq!(
            check(&s.controller, "not.a.permit").await["reason"],
            "bad_signature"
        );
        // Another tenant's controller learns nothing: not even that it is genuine.
        let other = s.key("other", vec![Role::Controller], None).await;
        assert_eq!(
            check(&other, &token).await,
            json!({"valid": false, "reason": "bad_signature"})
        );
        let foreign = s.events(kind::PERMIT_VERIFIED).await;
        let last = &foreign.last().unwrap().event;
        assert_eq!(
            (last.tenant.as_str(), last.decision_id.as_deref()),
            ("other", None)
        );
        // A key this server does not have.
        let elsewhere = warden_store::open("sqlite::memory:").await.unwrap();
        elsewhere.migrate().await.unwrap();
        let stranger = permit_server(elsewhere).await;
        let (_, theirs) = stranger.decide(resolve(json!({"x": 1}))).await;
        let theirs = theirs["permit"]["token"].as_str().unwrap();
        assert_eq!(check(&s.controller, theirs).await["reason"], "unknown_key");
        // Still valid for its own tenant after all that.
        assert_eq!(check(&s.controller, &token).await["reason"], "valid");

        let (_, quick) = s.decide(json!({"type": "email.send"})).await;
        let quick = quick["permit"]["token"].as_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (_, expired) = s.verify_as(&s.controller, json!({"permit": quick})).await;
        assert_eq!(expired, json!({"valid": false, "reason": "expired"}));
    }
}

#[tokio::test]
async fn only_controllers_and_executors_verify_and_bodies_are_strict() {
    let Db { store, _dir } = stores().await.remove(0);
    let s = permit_server(store).await;
    let executor = s.key("acme", vec![Role::Executor], None).await;
    let agent = s.key("acme", vec![Role::Agent], Some("bot")).await;
    let (status, body) = s.decide_as(&executor, resolve(json!({}))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let ok = json!({"permit": "x.y.z"});
    let (status, _) = s.verify_as(&agent, ok.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.verify_as(&s.admin, ok.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(Method::POST, "/v1/permits/verify", None, &ok.to_string())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let table: &[(&str, &str)] = &[
        (r#"{"permit": "a", "permit": "b"}"#, "duplicate_key"),
        (
            r#"{"permit": "a", "payload": {"k": 1, "k": 2}}"#,
            "duplicate_key",
        ),
        (r#"{"payload": {}}"#, "invalid_body"),
        (r#"{"permit": 5}"#, "invalid_body"),
        (r#"{"permit": "a", "extra": 1}"#, "invalid_body"),
        (r#"{"permit": ""}"#, "invalid_field"),
        (r#"{"permit": "a", "payload": [1]}"#, "invalid_field"),
        (r#"{"permit": "a", "action": [null]}"#, "invalid_field"),
        (
            r#"{"permit": "a", "action": {"target": [null, null]}}"#,
            "invalid_field",
        ),
        (
            r#"{"permit": "a", "action": {"target": {"id": 5}}}"#,
            "invalid_body",
        ),
        ("[]", "invalid_body"),
        ("{", "invalid_body"),
    ];
    for (text, code) in table {
        let (status, body) = s
            .call(Method::POST, "/v1/permits/verify", Some(&executor), text)
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(*code)),
            "{text}: {body}"
        );
        assert!(
            !body["detail"].as_str().unwrap().contains("VerifyRequest"),
            "{body}"
        );
    }
    let long = json!({"permit": "a".repeat(4097)});
    let (status, body) = s.verify_as(&executor, long).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_field"))
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/permits/verify")
        .header("authorization", format!("Bearer {executor}"))
        .header("content-type", "text/plain")
        .body(Body::from(ok.to_string()))
        .unwrap();
    let response = s.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        s.events(kind::PERMIT_VERIFIED).await.is_empty(),
        "refused requests verify nothing"
    );
}

/// Runs every future on its own task, at once, and collects their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_verifies_of_a_single_use_permit_have_exactly_one_winner() {
    for Db { store, _dir } in stores().await {
        let s = Arc::new(permit_server(store).await);
        for _ in 0..3 {
            let (_, body) = s.decide(resolve(json!({"x": 1}))).await;
            let token = body["permit"]["token"].as_str().unwrap().to_owned();
            let wins = race_arc(&[Arc::clone(&s)], &s.controller, &token, 16).await;
            assert_eq!(wins, 1);
        }
        assert!(s.store.verify().await.unwrap().first_broken.is_none());
    }
}

/// Fires `n` verifies of `token` at once, spread over `servers`; returns how many were valid.
async fn race_arc(servers: &[Arc<Server>], key: &str, token: &str, n: usize) -> usize {
    let calls = (0..n).map(|i| {
        let s = Arc::clone(&servers[i % servers.len()]);
        let body = json!({"permit": token, "payload": {"x": 1}});
        let key = key.to_owned();
        async move { s.verify_as(&key, body).await }
    });
    let answers = futures_join_all(calls).await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert!(
            body["reason"] == "valid" || body["reason"] == "used_up",
            "{body}"
        );
    }
    answers.iter().filter(|(_, b)| b["valid"] == true).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_let_exactly_one_verify_win() {
    let Some((first, second)) = pg_replicas("permits").await else {
        return;
    };
    let a = Arc::new(permit_server(first).await);
    let b = permit_server(second).await;
    // Replicas share the key file (or WARDEN_PERMIT_KEY).
    b.state
        .permits()
        .replace((*a.state.permits().current()).clone());
    let b = Arc::new(b);
    for _ in 0..5 {
        let (_, body) = a.decide(resolve(json!({"x": 1}))).await;
        let token = body["permit"]["token"].as_str().unwrap().to_owned();
        let wins = race_arc(&[Arc::clone(&a), Arc::clone(&b)], &a.controller, &token, 12).await;
        assert_eq!(wins, 1);
    }
    let report = b.store.verify().await.unwrap();
    assert!(report.first_broken.is_none());
    assert_eq!(b.events(kind::PERMIT_VERIFIED).await.len(), 60);
}

#[tokio::test]
async fn an_executor_can_verify_offline_with_the_published_keys() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::{Signature, VerifyingKey};
    let Db { store, _dir } = stores().await.remove(0);
    let s = permit_server(store).await;
    let (status, keys) = s.call(Method::GET, "/v1/permits/keys", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let jwk = &keys["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    let payload = json!({"note": "ünïcode", "n": [1, 2.5]});
    let (_, body) = s.decide(resolve(payload.clone())).await;
    let token = body["permit"]["token"].as_str().unwrap();

    // What an executor does, knowing only the documented format.
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], jwk["kid"]);
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(parts[2])
        .unwrap()
        .try_into()
        .unwrap();
    VerifyingKey::from_bytes(&x)
        .unwrap()
        .verify_strict(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &Signature::from_bytes(&signature),
        )
        .unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["decision_id"], body["decision_id"]);
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["action_type"], "ticket.resolve");
    assert_eq!(claims["target"], json!({"type": "ticket", "id": "T-1"}));
    assert_eq!(claims["max_uses"], 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(claims["exp"].as_i64().unwrap() > now);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    // The payload digest: SHA-256 of RFC 8785, by hand for this payload.
    use sha2::Digest;
    let canonical = r#"{"n":[1,2.5],"note":"ünïcode"}"#;
    assert_eq!(
        claims["payload_sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
    );
    // Offline checks spend no use.
    let (_, verified) = s
        .verify_as(&s.controller, json!({"permit": token, "payload": payload}))
        .await;
    assert_eq!(verified["reason"], "valid");
}

#[tokio::test]
async fn a_verify_that_cannot_be_recorded_is_never_valid() {
    let Db { store, _dir } = stores().await.remove(0);
    let breakable = Breakable::over(store);
    let s = permit_server(breakable.clone()).await;
    let (_, body) = s.decide(resolve(json!({"x": 1}))).await;
    let token = body["permit"]["token"].as_str().unwrap();
    breakable.broken.store(true, Ordering::SeqCst);
    for key in [&s.controller] {
        let (status, body) = s
            .verify_as(key, json!({"permit": token, "payload": {"x": 1}}))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("audit_unavailable"))
        );
        let (status, _) = s
            .verify_as(key, json!({"permit": token, "payload": {"x": 2}}))
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    breakable.broken.store(false, Ordering::SeqCst);
    let (_, body) = s
        .verify_as(&s.controller, json!({"permit": token, "payload": {"x": 1}}))
        .await;
    assert_eq!(body["reason"], "valid", "the failed attempt spent nothing");
}

// ---------------------------------------------------------------------------------------------
// Budgets and rate limits.

const BUDGETS: &str = r#"
version: 1.0.0
default: allow
rules:
  - id: no-delete
    actions: [db.delete]
    effect: deny
budgets:
  - {id: fifty, per: agent, limits: {turns: 50}}
  - {id: per-run, per: run, limits: {cost_usd: 5}}
rate_limits:
  - {id: email-burst, actions: [email.send], per: agent, limit: 2, window: 1s}
"#;

/// A server with [`BUDGETS`] whose `controller` may name any agent.
async fn budget_server(store: Arc<dyn Store>) -> Server {
    let mut s = server_with(store, BUDGETS, Limits::default()).await;
    s.controller = s.key("acme", vec![Role::Controller], Some("*")).await;
    s
}

/// `GET /v1/budgets` as the admin: the `used` of `id`'s `counter`, if any.
async fn used(s: &Server, query: &str, id: &str, counter: &str) -> Option<f64> {
    let (status, body) = s
        .call(
            Method::GET,
            &format!("/v1/budgets?{query}"),
            Some(&s.admin),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id && u["counter"] == counter)
        .map(|u| u["used"].as_f64().unwrap())
}

fn effects(answers: &[Value]) -> (usize, usize) {
    let allowed = answers.iter().filter(|a| a["effect"] == "allow").count();
    (allowed, answers.len() - allowed)
}

#[tokio::test]
async fn two_hundred_concurrent_requests_against_a_limit_of_fifty_allow_exactly_fifty() {
    for db in stores().await {
        let s = budget_server(db.store).await;
        let answers = futures_join(
            &s,
            &s.controller,
            json!({"type": "ticket.update", "agent": "crowd"}),
            200,
        )
        .await;
        assert_eq!(effects(&answers), (50, 150));
        assert_eq!(used(&s, "agent=crowd", "fifty", "turns").await, Some(50.0));
        let denied = answers.iter().find(|a| a["effect"] == "deny").unwrap();
        let reason = &denied["reasons"][0];
        assert_eq!(reason["code"], "budget_exceeded");
        assert_eq!(reason["limit"]["id"], "fifty");
        assert_eq!(reason["limit"]["counter"], "turns");
        assert_eq!(reason["limit"]["limit"], 50.0);
        assert_eq!(reason["limit"]["current"], 50.0);
        assert_eq!(denied["obligations"], json!({}));
        // Every answer is in the audit log as answered: 50 allows, 150 denies.
        let decisions = s.events(kind::DECISION).await;
        let denies = decisions
            .iter()
            .filter(|e| e.event.effect.as_deref() == Some("deny"))
            .count();
        assert_eq!((decisions.len(), denies), (200, 150));
        assert!(s.store.verify().await.unwrap().first_broken.is_none());
    }
}

#[tokio::test]
async fn two_replicas_on_one_postgres_database_allow_exactly_fifty_of_two_hundred() {
    let Some((first, second)) = pg_replicas("budgets").await else {
        return;
    };
    let a = budget_server(first).await;
    let mut b = budget_server(second).await;
    b.controller = a.controller.clone();
    let action = json!({"type": "ticket.update", "agent": "crowd"});
    let (left, right) = tokio::join!(
        futures_join(&a, &a.controller, action.clone(), 100),
        futures_join(&b, &b.controller, action, 100),
    );
    let (l, r) = (effects(&left), effects(&right));
    assert_eq!(l.0 + r.0, 50, "allowed on a: {}, on b: {}", l.0, r.0);
    assert_eq!(used(&a, "agent=crowd", "fifty", "turns").await, Some(50.0));
    assert_eq!(used(&b, "agent=crowd", "fifty", "turns").await, Some(50.0));
}

#[tokio::test]
async fn a_five_dollar_run_never_lets_five_thirteen_through_and_denials_cost_nothing() {
    for db in stores().await {
        let s = budget_server(db.store).await;
        let spend = |usd: f64| {
            json!({"type": "ticket.update", "agent": "spender", "run_id": "r1",
                   "usage": {"cost_usd": usd}})
        };
        for _ in 0..38 {
            let (_, d) = s.decide(spend(0.13)).await;
            assert_eq!(d["effect"], "allow", "{d}");
        }
        // 38 × 0.13 = 4.94: one more would be 5.07.
        let (_, d) = s.decide(spend(0.13)).await;
        assert_eq!(d["effect"], "deny");
        assert_eq!(d["reasons"][0]["code"], "budget_exceeded");
        assert_eq!(d["reasons"][0]["limit"]["current"], 4.94);
        assert_eq!(d["reasons"][0]["limit"]["requested"], 0.13);
        assert_eq!(
            d["reasons"][0]["message"],
            "budget `per-run` is used up: `cost_usd` would reach 5.07 of 5 (4.94 used)"
        );
        // Neither the over-limit deny nor a deny by a rule consumed anything.
        let (_, d) = s
            .decide(
                json!({"type": "db.delete", "agent": "spender", "run_id": "r1",
                           "usage": {"cost_usd": 0.01}}),
            )
            .await;
        assert_eq!(d["effect"], "deny");
        assert_eq!(
            used(&s, "agent=spender&run_id=r1", "per-run", "cost_usd").await,
            Some(4.94)
        );
        assert_eq!(
            used(&s, "agent=spender", "fifty", "turns").await,
            Some(38.0)
        );
        // What is left still fits exactly.
        let (_, d) = s.decide(spend(0.06)).await;
        assert_eq!(d["effect"], "allow");
        assert_eq!(
            used(&s, "run_id=r1", "per-run", "cost_usd").await,
            Some(5.0)
        );
    }
}

#[tokio::test]
async fn a_replay_does_not_charge_twice_and_a_run_belongs_to_its_agent() {
    for db in stores().await {
        let s = budget_server(db.store).await;
        let action = json!({"id": "once", "type": "ticket.update", "agent": "a1",
                            "run_id": "shared", "usage": {"cost_usd": 4}});
        let (_, first) = s.decide(action.clone()).await;
        let (_, again) = s.decide(action).await;
        assert_eq!(first["effect"], "allow");
        assert_eq!(again["replayed"], true);
        assert_eq!(again["decision_id"], first["decision_id"]);
        assert_eq!(
            used(&s, "agent=a1&run_id=shared", "per-run", "cost_usd").await,
            Some(4.0)
        );
        // Another agent naming the same run spends its own budget, not a1's.
        let (_, other) = s
            .decide(
                json!({"type": "ticket.update", "agent": "a2", "run_id": "shared",
                           "usage": {"cost_usd": 4}}),
            )
            .await;
        assert_eq!(other["effect"], "allow");
        assert_eq!(
            used(&s, "agent=a1&run_id=shared", "per-run", "cost_usd").await,
            Some(4.0)
        );
        // A replayed over-limit deny stays a deny and charges nothing either.
        let over = json!({"id": "over", "type": "ticket.update", "agent": "a1",
                          "run_id": "shared", "usage": {"cost_usd": 2}});
        let (_, d) = s.decide(over.clone()).await;
        assert_eq!(d["effect"], "deny");
        let (_, d) = s.decide(over).await;
        assert_eq!(
            (d["effect"].as_str(), d["replayed"].as_bool()),
            (Some("deny"), Some(true))
        );
        assert_eq!(
            used(&s, "agent=a1&run_id=shared", "per-run", "cost_usd").await,
            Some(4.0)
        );
    }
}

#[tokio::test]
async fn a_rate_limit_window_resets() {
    let db = stores().await.remove(0);
    let s = budget_server(db.store).await;
    let email = json!({"type": "email.send", "agent": "mailer"});
    // Start just after a second boundary, so the three requests share one window.
    let now = warden_server::state::now_ms();
    tokio::time::sleep(Duration::from_millis((1000 - now % 1000 + 20) as u64)).await;
    for _ in 0..2 {
        assert_eq!(s.decide(email.clone()).await.1["effect"], "allow");
    }
    let (_, d) = s.decide(email.clone()).await;
    assert_eq!(d["effect"], "deny");
    let reason = &d["reasons"][0];
    assert_eq!(reason["code"], "rate_limited");
    assert_eq!(reason["limit"]["current"], 2.0);
    let resets = reason["limit"]["resets_at"].as_str().unwrap();
    assert!(resets.ends_with(".000Z"), "{resets}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(s.decide(email).await.1["effect"], "allow");
}

#[tokio::test]
async fn budget_usage_needs_a_controller_or_admin_and_a_strict_query() {
    let db = stores().await.remove(0);
    let s = budget_server(db.store).await;
    let agent = s.key("acme", vec![Role::Agent], Some("bot")).await;
    let get = |key: String, query: &'static str| {
        let s = &s;
        async move {
            s.call(Method::GET, &format!("/v1/budgets{query}"), Some(&key), "")
                .await
        }
    };
    assert_eq!(get(agent, "?agent=bot").await.0, StatusCode::FORBIDDEN);
    assert_eq!(get(s.admin.clone(), "").await.1, json!({"usage": []}));
    for bad in ["?agent=", "?agent=a&agent=b", "?who=a", "?run_id=%ff"] {
        let (status, body) = get(s.admin.clone(), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_query", "{bad}");
    }
    // A controller for `support-*` sees only those agents.
    let (status, _) = get(s.support.clone(), "?agent=other").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = get(s.support.clone(), "?run_id=r").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("agent_required"))
    );
    let (status, body) = get(s.support.clone(), "?agent=support-1").await;
    assert_eq!((status, body["usage"].clone()), (StatusCode::OK, json!([])));
}

/// `GET /v1/policy/digest` as `token`, with `If-None-Match: etag` when given: status,
/// content type, ETag and body text.
async fn digest(
    s: &Server,
    query: &str,
    token: &str,
    etag: Option<&str>,
) -> (StatusCode, String, String, String) {
    let mut request = Request::builder()
        .uri(format!("/v1/policy/digest{query}"))
        .header("authorization", format!("Bearer {token}"));
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    let response = s
        .app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (content_type, tag) = (header("content-type"), header("etag"));
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        tag,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn an_agent_reads_its_own_policy_digest_and_no_one_elses() {
    let db = stores().await.remove(0);
    let s = server(db.store).await;
    let agent = s.key("acme", vec![Role::Agent], Some("support-bot")).await;
    let (status, content_type, etag, text) = digest(&s, "", &agent, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(content_type, "text/markdown; charset=utf-8");
    assert!(
        text.starts_with("# What `support-bot` may do (policy 1.0.0)"),
        "{text}"
    );
    assert!(text.contains("Autonomy tier: **sandbox**."), "{text}");
    assert!(text.contains("(rule `low-confidence-resolve`)"), "{text}");
    // Its own id named explicitly is the same digest, and the ETag holds.
    let (status, _, same_etag, same) = digest(&s, "?agent=support-bot", &agent, None).await;
    assert_eq!((status, &same_etag, &same), (StatusCode::OK, &etag, &text));
    let (status, _, _, body) = digest(&s, "", &agent, Some(&etag)).await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));

    // Another agent's digest: never through an agent key, nor a controller limited to
    // other agents.
    let (status, _, _, body) = digest(&s, "?agent=billing-bot", &agent, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _, _) = digest(&s, "?agent=billing-bot", &s.support, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _, body) = digest(&s, "?agent=support-x", &s.support, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An admin reads any agent's (or, naming none, what an action without one may do);
    // bad queries are refused.
    let (status, _, _, body) = digest(&s, "?agent=billing-bot", &s.admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("No autonomy tier is bound to this agent."),
        "{body}"
    );
    let (status, _, _, body) = digest(&s, "", &s.admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.starts_with("# What an action that names no agent may do"),
        "{body}"
    );
    let (status, _, _, body) = digest(&s, "", &s.support, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("agent_required"), "{body}");
    for (query, code) in [
        ("?agent=a&agent=b", "invalid_query"),
        ("?who=a", "invalid_query"),
        ("?agent=", "invalid_query"),
        ("?agent=%00x", "invalid_query"),
    ] {
        let (status, _, _, body) = digest(&s, query, &s.admin, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.contains(code), "{query}: {body}");
    }
    let (status, _, _, _) = digest(&s, "?agent=support-bot", &s.operator, None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an operator is not of the tenant"
    );
}

#[tokio::test]
async fn a_deny_by_default_names_the_missing_rule_and_the_agent_reads_its_denials() {
    let policy = format!("{POLICY}proposals: on\n");
    for db in stores().await {
        let s = server_with(
            db.store,
            &policy,
            Limits {
                key_cache_ttl: Duration::ZERO,
                ..Limits::default()
            },
        )
        .await;
        let agent = s.key("acme", vec![Role::Agent], Some("support-bot")).await;
        let asked = json!({"type": "crm.export", "agent": "support-bot", "target": {"type": "account", "id": "A-7"}});
        let (status, body) = s.decide_as(&s.support, asked).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["effect"], "deny");
        let missing = &body["rule_missing"];
        assert_eq!(missing["id"], "allow-crm-export-support-bot", "{body}");
        assert_eq!(missing["actions"], json!(["crm.export"]));
        assert_eq!(missing["agents"], json!(["support-bot"]));
        assert_eq!(
            missing["when"],
            r#"action.target.type == "account" && action.target.id == "A-7""#
        );
        let steps: Vec<&str> = body["next_steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            steps,
            [
                "/v1/denials?last=10",
                "/v1/policy/digest?agent=support-bot",
                "/v1/proposals"
            ]
        );
        assert_eq!(body["next_steps"][2]["action"], "submit_proposal");
        assert_eq!(body["next_steps"][2]["method"], "POST");
        // A rule's own deny misses no rule; it still says where to look.
        let (_, by_rule) = s
            .decide_as(
                &s.support,
                json!({"type": "ticket.resolve", "agent": "support-bot", "confidence": 0.2}),
            )
            .await;
        assert_eq!(by_rule["effect"], "deny");
        assert_eq!(by_rule["rule_missing"], Value::Null);
        assert_eq!(by_rule["next_steps"].as_array().unwrap().len(), 3);

        let (status, list) = s
            .call(Method::GET, "/v1/denials?last=5", Some(&agent), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let denials = list["denials"].as_array().unwrap();
        assert_eq!(denials.len(), 2, "{list}");
        assert_eq!(denials[0]["action_type"], "ticket.resolve", "newest first");
        assert_eq!(
            denials[0]["rules"],
            json!(["low-confidence-resolve", "support-may-act"])
        );
        assert_eq!(denials[1]["rule_missing"], *missing);
        assert_eq!(denials[1]["decision_id"], body["decision_id"]);
        // Only the agent's own, only through an agent key, strictly parsed.
        let other = s.key("acme", vec![Role::Agent], Some("billing-bot")).await;
        let (_, none) = s.call(Method::GET, "/v1/denials", Some(&other), "").await;
        assert_eq!(none["denials"], json!([]), "{none}");
        let (status, _) = s
            .call(Method::GET, "/v1/denials", Some(&s.controller), "")
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        for query in ["?last=x", "?last=1&last=2", "?n=1"] {
            let (status, body) = s
                .call(
                    Method::GET,
                    &format!("/v1/denials{query}"),
                    Some(&agent),
                    "",
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        }
        let (_, clamped) = s
            .call(Method::GET, "/v1/denials?last=0", Some(&agent), "")
            .await;
        assert_eq!(clamped["denials"].as_array().unwrap().len(), 1);
        // The same agent id in another tenant sees none of acme's denials.
        let globex = s
            .key("globex", vec![Role::Agent], Some("support-bot"))
            .await;
        let (_, theirs) = s.call(Method::GET, "/v1/denials", Some(&globex), "").await;
        assert_eq!(theirs["denials"], json!([]), "{theirs}");
        // A revoked key reads neither its denials nor its digest.
        let id = agent.split('_').nth(1).unwrap();
        assert!(s.store.revoke_key(id, 1).await.unwrap());
        for path in ["/v1/denials", "/v1/policy/digest"] {
            let (status, _) = s.call(Method::GET, path, Some(&agent), "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        }
    }
    // With proposals off (the default), a deny carries neither.
    let db = stores().await.remove(0);
    let s = server(db.store).await;
    let (_, body) = s.decide(json!({"type": "crm.export"})).await;
    assert_eq!(
        (body["rule_missing"].clone(), body["next_steps"].clone()),
        (Value::Null, json!([]))
    );
}

/// Issue 11: a tenant's policy is a history of versions in the store — published, listed,
/// shown, diffed and rolled back by its admin, each change audited with its hash — and
/// decisions use the active one at once.
#[tokio::test]
async fn policy_versions_are_published_listed_diffed_and_rolled_back() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let yaml = "application/yaml";
        // Without a version of its own the tenant decides with `default`'s.
        let (status, body) = s.call(Method::GET, "/v1/policy", Some(&s.admin), "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["tenant"].as_str(), body["revision"].as_i64()),
            (Some("default"), Some(1))
        );
        assert_eq!(body["source"], POLICY);

        let v2 = POLICY.replace("version: 1.0.0", "version: 2.0.0");
        let (status, body) = s
            .call_typed(
                Method::POST,
                "/v1/policy?comment=first%20own",
                Some(&s.admin),
                yaml,
                &v2,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let first = body["policy"].clone();
        assert_eq!(
            (first["tenant"].as_str(), first["revision"].as_i64()),
            (Some("acme"), Some(1))
        );
        assert_eq!(first["comment"], "first own");
        let (_, d) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(
            (d["policy_version"].as_str(), d["policy_hash"].as_str()),
            (Some("2.0.0"), first["hash"].as_str())
        );

        // The same document again changes nothing; an older version, a broken document
        // and a body that is not a document are refused, and nothing is published.
        let (status, body) = s
            .call_typed(Method::POST, "/v1/policy", Some(&s.admin), yaml, &v2)
            .await;
        assert_eq!(
            (status, body["changed"].as_bool()),
            (StatusCode::OK, Some(false)),
            "{body}"
        );
        let older = POLICY.replace("version: 1.0.0", "version: 1.5.0");
        let (status, body) = s
            .call_typed(Method::POST, "/v1/policy", Some(&s.admin), yaml, &older)
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("version_not_newer")),
            "{body}"
        );
        let broken = "version: 3.0.0\ndefault: alow\nrules:\n  - id: x\n    actions: [a]\n    effect: permit\n";
        let (status, body) = s
            .call_typed(Method::POST, "/v1/policy", Some(&s.admin), yaml, broken)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("2:10:") && detail.contains("6:13:"),
            "every problem, positioned: {detail}"
        );
        let (status, _) = s
            .call_typed(
                Method::POST,
                "/v1/policy",
                Some(&s.admin),
                "text/plain",
                &v2,
            )
            .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

        // A second version, as JSON, changing one rule.
        let mut doc: Value = serde_json::to_value(serde_norway_like(&v2)).unwrap();
        doc["version"] = json!("2.1.0");
        doc["rules"][1]["actions"] = json!(["ticket.*"]);
        let (status, body) = s
            .call(Method::POST, "/v1/policy", Some(&s.admin), &doc.to_string())
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["policy"]["parent"], 1);
        let (_, d) = s.decide(json!({"type": "email.send"})).await;
        assert_eq!(
            (d["effect"].as_str(), d["policy_version"].as_str()),
            (Some("deny"), Some("2.1.0"))
        );

        let (status, body) = s
            .call(Method::GET, "/v1/policy/versions", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let listed: Vec<(i64, &str)> = body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["revision"].as_i64().unwrap(),
                    v["status"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(listed, [(2, "active"), (1, "superseded")]);
        assert!(
            body["versions"][0].get("source").is_none(),
            "lists carry no sources"
        );
        let (_, one) = s
            .call(Method::GET, "/v1/policy/versions/2.0.0", Some(&s.admin), "")
            .await;
        assert_eq!(
            (one["revision"].as_i64(), one["source"].as_str()),
            (Some(1), Some(v2.as_str()))
        );
        for (path, status, code) in [
            ("/v1/policy/versions/9", StatusCode::NOT_FOUND, "not_found"),
            (
                "/v1/policy/versions/latest",
                StatusCode::BAD_REQUEST,
                "invalid_version",
            ),
            (
                "/v1/policy/versions?limit=0",
                StatusCode::BAD_REQUEST,
                "invalid_query",
            ),
            ("/v1/policy/diff", StatusCode::BAD_REQUEST, "invalid_query"),
        ] {
            let (got, body) = s.call(Method::GET, path, Some(&s.admin), "").await;
            assert_eq!(
                (got, body["error"].as_str()),
                (status, Some(code)),
                "{path}: {body}"
            );
        }

        let (status, diff) = s
            .call(Method::GET, "/v1/policy/diff?from=1", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{diff}");
        assert_eq!(
            diff["settings"],
            json!([{"path": "version", "before": "2.0.0", "after": "2.1.0"}])
        );
        assert_eq!(diff["rules_changed"][0]["id"], "support-may-act");
        assert_eq!(diff["rules_changed"][0]["fields"][0]["path"], "actions");
        assert!(
            diff["text"]
                .as_str()
                .unwrap()
                .contains("~ rule support-may-act"),
            "{diff}"
        );

        // A rollback publishes revision 1's document again, as revision 3.
        let (status, body) = s
            .call(
                Method::POST,
                "/v1/policy/rollback",
                Some(&s.admin),
                r#"{"version": "1"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            (
                body["policy"]["revision"].as_i64(),
                body["policy"]["version"].as_str()
            ),
            (Some(3), Some("2.0.0"))
        );
        assert_eq!(body["policy"]["hash"], first["hash"]);
        let (_, d) = s.decide(json!({"type": "email.send"})).await;
        assert_eq!(
            (d["effect"].as_str(), d["policy_version"].as_str()),
            (Some("allow"), Some("2.0.0"))
        );
        let (status, _) = s
            .call(
                Method::POST,
                "/v1/policy/rollback",
                Some(&s.admin),
                r#"{"version": "1", "extra": 1}"#,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Only the tenant's admin (or an operator) manages it; `default` is the operator's.
        for (method, path) in [
            (Method::GET, "/v1/policy"),
            (Method::POST, "/v1/policy/rollback"),
        ] {
            let (status, _) = s
                .call(method, path, Some(&s.controller), r#"{"version": "1"}"#)
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        }
        let (status, _) = s
            .call(Method::GET, "/v1/policy?tenant=globex", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let default_admin = s.key("default", vec![Role::Admin], None).await;
        let v9 = POLICY.replace("version: 1.0.0", "version: 9.0.0");
        let (status, _) = s
            .call_typed(Method::POST, "/v1/policy", Some(&default_admin), yaml, &v9)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = s
            .call_typed(
                Method::POST,
                "/v1/policy?tenant=default",
                Some(&s.operator),
                yaml,
                &v9,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, globex) = s
            .call(
                Method::GET,
                "/v1/policy?tenant=globex",
                Some(&s.operator),
                "",
            )
            .await;
        assert_eq!(
            globex["version"], "9.0.0",
            "tenants without their own follow default"
        );

        // Refusals are audited as such (who, why), and wrote nothing else.
        let refusals = s.events(kind::POLICY_REFUSED).await;
        let codes: Vec<&str> = refusals
            .iter()
            .map(|e| e.event.detail["error"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["version_not_newer", "policy_invalid"]);
        assert!(
            refusals[1].event.detail["detail"]
                .as_str()
                .unwrap()
                .contains("2:10:")
        );
        // Every publish is in the chain, with its cause and hash.
        let published = s.events(kind::POLICY_PUBLISHED).await;
        let causes: Vec<(&str, &str)> = published
            .iter()
            .map(|e| {
                (
                    e.event.tenant.as_str(),
                    e.event.detail["cause"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            causes,
            [
                ("default", "seed"),
                ("acme", "publish"),
                ("acme", "publish"),
                ("acme", "rollback"),
                ("default", "publish")
            ]
        );
        assert_eq!(published[3].event.detail["from_revision"], 1);
        assert_eq!(
            published[3].event.policy_hash.as_deref(),
            first["hash"].as_str()
        );
        let (_, verified) = s
            .call(Method::GET, "/v1/audit/verify", Some(&s.operator), "")
            .await;
        assert_eq!(verified["intact"], true);
    }
}

/// The YAML test policy as JSON (the server accepts either).
fn serde_norway_like(yaml: &str) -> Value {
    let policy = warden_policy::Policy::parse(yaml).unwrap();
    assert_eq!(policy.version().as_str(), "2.0.0");
    json!({
        "version": "2.0.0",
        "default": "deny",
        "agents": {"support-*": {"tier": "sandbox"}},
        "rules": [
            {"id": "low-confidence-resolve", "actions": ["ticket.resolve"], "when": "action.confidence < 0.85", "effect": "deny", "reason": "confidence {{action.confidence}} is below 0.85"},
            {"id": "support-may-act", "actions": ["ticket.*", "email.send"], "effect": "allow", "reason": "support may work tickets for {{context.user.email}}"},
            {"id": "card-check", "actions": ["payment.refund"], "when": "action.payload.card.size() > 0 && action.payload.amount < 100", "effect": "allow"}
        ],
        "audit": {"keep": ["action.target.id", "context.user"], "redact": ["context.user.email"]}
    })
}

/// Issue 11: continuous decisions on two replicas during 100 publishes: none fails, each
/// records exactly one version, and both answer with the last within a second.
#[tokio::test]
async fn two_replicas_follow_100_publishes_without_a_failed_decision() {
    let Some((first, second)) = pg_replicas("follow").await else {
        return;
    };
    let a = server(first).await;
    let mut b = server(second).await;
    b.controller = a.controller.clone();
    for s in [&a, &b] {
        tokio::spawn(Arc::clone(s.state.policies()).follow(Duration::from_secs(2)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut deciders = Vec::new();
    for s in [&a, &b] {
        let (app, key, stop) = (s.app.clone(), s.controller.clone(), Arc::clone(&stop));
        deciders.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::builder()
                    .method(Method::POST)
                    .uri("/v1/decisions")
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(Body::from(r#"{"type": "ticket.update"}"#))
                    .unwrap();
                let response = app.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(body["effect"], "allow", "{body}");
                seen.push((
                    body["policy_version"].as_str().unwrap().to_owned(),
                    body["policy_hash"].as_str().unwrap().to_owned(),
                ));
            }
            seen
        }));
    }
    let mut hashes = std::collections::HashMap::new();
    for n in 1..=100 {
        let version = format!("2.0.{n}");
        let doc = POLICY.replace("version: 1.0.0", &format!("version: {version}"));
        let (status, body) = a
            .call_typed(
                Method::POST,
                "/v1/policy",
                Some(&a.admin),
                "application/yaml",
                &doc,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        hashes.insert(version, body["policy"]["hash"].as_str().unwrap().to_owned());
    }
    let published = std::time::Instant::now();
    loop {
        let (_, d) = b.decide(json!({"type": "ticket.update"})).await;
        if d["policy_version"] == "2.0.100" {
            break;
        }
        assert!(
            published.elapsed() < Duration::from_secs(1),
            "the second replica still answers {}",
            d["policy_version"]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut decided = 0;
    for decider in deciders {
        for (version, hash) in decider.await.unwrap() {
            decided += 1;
            let expected = if version == "1.0.0" {
                warden_server::policies::content_hash(POLICY)
            } else {
                hashes[&version].clone()
            };
            assert_eq!(
                hash, expected,
                "a decision names one version and its own hash"
            );
        }
    }
    assert!(decided > 0);
    let (_, d) = a.decide(json!({"type": "ticket.update"})).await;
    assert_eq!(d["policy_version"], "2.0.100");
}

/// Issue 11: a published version this replica cannot compile (say, written by a newer
/// release) is never put in force here: the previous one decides, the failure is audited
/// once and shown on `/readyz` and `/metrics`, and the next good version clears it.
#[tokio::test]
async fn a_version_that_does_not_compile_here_is_never_activated() {
    for Db { store, _dir } in stores().await {
        let s = server(Arc::clone(&store)).await;
        tokio::spawn(Arc::clone(s.state.policies()).follow(Duration::from_millis(50)));
        let stored = |revision: i64, source: &str| warden_store::PolicyPublish {
            policy: warden_store::StoredPolicy {
                info: warden_store::PolicyVersionInfo {
                    tenant: "default".into(),
                    revision,
                    version: format!("{revision}.0.0"),
                    hash: warden_server::policies::content_hash(source),
                    parent: Some(revision - 1),
                    author: "newer-release".into(),
                    comment: None,
                    created_at_ms: 1,
                    status: warden_store::policy_status::ACTIVE.into(),
                },
                source: source.to_owned(),
            },
            previous_becomes: warden_store::policy_status::SUPERSEDED,
            event: warden_store::NewEvent {
                id: format!("published-{revision}"),
                time_ms: 1,
                tenant: "default".into(),
                kind: kind::POLICY_PUBLISHED.into(),
                ..warden_store::NewEvent::default()
            },
            proposal: None,
        };
        let future = "version: 2.0.0\ndefault: deny\nfeature_from_the_future: true\n";
        assert_eq!(
            store.publish_policy(stored(2, future)).await.unwrap(),
            warden_store::Published::Written
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while s.events(kind::POLICY_ACTIVATION_FAILED).await.is_empty() {
            assert!(std::time::Instant::now() < deadline, "no failure audited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, d) = s.decide(json!({"type": "ticket.update"})).await;
        assert_eq!(d["policy_version"], "1.0.0", "the previous version decides");
        let (status, ready) = s.call(Method::GET, "/readyz", None, "").await;
        assert_eq!(status, StatusCode::OK);
        let detail = ready["detail"].as_str().unwrap();
        assert!(
            detail.contains("revision 2") && detail.contains("feature_from_the_future"),
            "{detail}"
        );
        let (_, metrics) = s.call(Method::GET, "/metrics", Some(&s.operator), "").await;
        let metrics = metrics.as_str().unwrap();
        assert!(
            metrics.contains("warden_policy_activation_failed{tenant=\"default\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("warden_policy_revision{tenant=\"default\"} 1"),
            "{metrics}"
        );
        // Polling again does not audit it again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let failed = s.events(kind::POLICY_ACTIVATION_FAILED).await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].event.detail["kept_revision"], 1);

        let good = POLICY.replace("version: 1.0.0", "version: 3.0.0");
        store.publish_policy(stored(3, &good)).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, d) = s.decide(json!({"type": "ticket.update"})).await;
            if d["policy_version"] == "3.0.0" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the good version never came"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, ready) = s.call(Method::GET, "/readyz", None, "").await;
        assert!(ready.get("detail").is_none(), "{ready}");
    }
}

/// Issue 11: a candidate runs in shadow beside the live policy: live answers never change,
/// disagreements are counted by kind with examples that hold no payload values, and
/// starting and ending it are audited; only an admin (or operator) may.
#[tokio::test]
async fn a_shadow_policy_counts_disagreements_without_changing_an_answer() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        let yaml = "application/yaml";
        // The candidate stops support from sending email.
        let candidate = POLICY.replace("version: 1.0.0", "version: 1.1.0").replace(
            r#"actions: ["ticket.*", email.send]"#,
            r#"actions: ["ticket.*"]"#,
        );
        let (status, body) = s
            .call_typed(
                Method::POST,
                "/v1/policy/shadow",
                Some(&s.controller),
                yaml,
                &candidate,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, body) = s
            .call_typed(
                Method::POST,
                "/v1/policy/shadow",
                Some(&s.admin),
                yaml,
                "version: 2.0.0\ndefault: alow\n",
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = s
            .call(Method::GET, "/v1/policy/shadow", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

        let (status, body) = s
            .call_typed(
                Method::POST,
                "/v1/policy/shadow",
                Some(&s.admin),
                yaml,
                &candidate,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["policy"]["status"], "shadow");
        let revision = body["policy"]["revision"].as_i64().unwrap();
        for kind in ["email.send", "email.send", "ticket.update"] {
            let (_, d) = s
                .decide(json!({"type": kind, "payload": {"to": "ann@example.com"}}))
                .await;
            assert_eq!(d["effect"], "allow", "the live answer stands: {d}");
            assert_eq!(d["policy_version"], "1.0.0");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let tally = loop {
            let (_, tally) = s
                .call(Method::GET, "/v1/policy/shadow", Some(&s.admin), "")
                .await;
            if tally["decisions"] == 3 {
                break tally;
            }
            assert!(std::time::Instant::now() < deadline, "{tally}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            (tally["agreed"].as_u64(), tally["dropped"].as_u64()),
            (Some(1), Some(0))
        );
        assert_eq!(tally["disagreements"][0]["kind"], "allow→deny");
        assert_eq!(tally["disagreements"][0]["count"], 2);
        let example = &tally["disagreements"][0]["examples"][0];
        assert_eq!(example["action_type"], "email.send");
        assert_eq!(example["live_rules"], json!(["support-may-act"]));
        assert!(!tally.to_string().contains("ann@example.com"), "{tally}");
        // The shadow is a stored version; the active one is untouched.
        let (_, active) = s.call(Method::GET, "/v1/policy", Some(&s.admin), "").await;
        assert_eq!(active["version"], "1.0.0");
        let (_, shown) = s
            .call(
                Method::GET,
                &format!("/v1/policy/versions/{revision}"),
                Some(&s.admin),
                "",
            )
            .await;
        assert_eq!(shown["status"], "shadow");

        // A repeated key is no reference, and no document either.
        let (status, body) = s
            .call(
                Method::POST,
                "/v1/policy/shadow",
                Some(&s.admin),
                r#"{"version": "1", "version": "1.1.0"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        // A stored version can be shadowed by reference (here the shadow's own, as a new
        // revision); it replaces the running shadow, whose tally starts again.
        let (status, body) = s
            .call(
                Method::POST,
                "/v1/policy/shadow",
                Some(&s.admin),
                r#"{"version": "1.1.0"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            (
                body["policy"]["version"].as_str(),
                body["policy"]["revision"].as_i64()
            ),
            (Some("1.1.0"), Some(revision + 1))
        );
        let (_, tally) = s
            .call(Method::GET, "/v1/policy/shadow", Some(&s.admin), "")
            .await;
        assert_eq!(tally["decisions"], 0);
        let (_, old) = s
            .call(
                Method::GET,
                &format!("/v1/policy/versions/{revision}"),
                Some(&s.admin),
                "",
            )
            .await;
        assert_eq!(old["status"], "superseded");

        let (status, ended) = s
            .call(Method::DELETE, "/v1/policy/shadow", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{ended}");
        let (status, _) = s
            .call(Method::DELETE, "/v1/policy/shadow", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, d) = s.decide(json!({"type": "email.send"})).await;
        assert_eq!(d["effect"], "allow");

        let started = s.events(kind::POLICY_SHADOW_STARTED).await;
        assert_eq!(started.len(), 2);
        assert_eq!(started[1].event.detail["from_revision"], revision);
        let ended = s.events(kind::POLICY_SHADOW_ENDED).await;
        assert_eq!(ended.len(), 1);
        assert_eq!(
            ended[0].event.detail["by"],
            s.admin.split('_').nth(1).unwrap()
        );
    }
}

/// Issue 11: a new version whose first decisions fail to evaluate too often is rolled back
/// to its parent by itself: the bad version becomes `failed`, the rollback is a version
/// with the figures in its event, and `/metrics` counts it.
#[tokio::test]
async fn a_version_that_fails_to_evaluate_is_rolled_back_automatically() {
    for Db { store, _dir } in stores().await {
        let s = server(store).await;
        s.state
            .policies()
            .set_auto_rollback(warden_server::rollback::AutoRollback {
                max_error_rate: Some(0.5),
                decisions: 10,
                window: Duration::from_secs(600),
            });
        let yaml = "application/yaml";
        let good = POLICY.replace("version: 1.0.0", "version: 1.1.0");
        let (status, body) = s
            .call_typed(Method::POST, "/v1/policy", Some(&s.admin), yaml, &good)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // Reads a payload field most actions lack: an evaluation error, so a deny.
        let bad = good.replace("version: 1.1.0", "version: 1.2.0").replace(
            "  - id: support-may-act\n",
            "  - id: needs-amount\n    actions: [\"ticket.*\"]\n    when: action.payload.amount > 10\n    effect: deny\n  - id: support-may-act\n",
        );
        let (status, body) = s
            .call_typed(Method::POST, "/v1/policy", Some(&s.admin), yaml, &bad)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let bad_revision = body["policy"]["revision"].as_i64().unwrap();
        for _ in 0..10 {
            let (_, d) = s.decide(json!({"type": "ticket.update"})).await;
            assert_eq!(d["effect"], "deny", "{d}");
            assert_eq!(d["reasons"][0]["code"], "evaluation_error", "{d}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, d) = s.decide(json!({"type": "ticket.update"})).await;
            if d["policy_version"] == "1.1.0" {
                assert_eq!(d["effect"], "allow");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never rolled back: {d}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_, versions) = s
            .call(Method::GET, "/v1/policy/versions", Some(&s.admin), "")
            .await;
        let statuses: Vec<(i64, &str, &str)> = versions["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["revision"].as_i64().unwrap(),
                    v["status"].as_str().unwrap(),
                    v["author"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(statuses[0], (bad_revision + 1, "active", "auto_rollback"));
        assert_eq!((statuses[1].0, statuses[1].1), (bad_revision, "failed"));
        let published = s.events(kind::POLICY_PUBLISHED).await;
        let rollback = &published.last().unwrap().event.detail;
        assert_eq!(rollback["cause"], "auto_rollback");
        assert_eq!(
            (
                rollback["failed_revision"].as_i64(),
                rollback["from_revision"].as_i64()
            ),
            (Some(bad_revision), Some(bad_revision - 1))
        );
        assert_eq!(
            (rollback["decisions"].as_u64(), rollback["errors"].as_u64()),
            (Some(10), Some(10))
        );
        let (_, metrics) = s.call(Method::GET, "/metrics", Some(&s.operator), "").await;
        assert!(
            metrics
                .as_str()
                .unwrap()
                .contains("warden_policy_auto_rollbacks{tenant=\"acme\"} 1"),
            "{metrics}"
        );
        // The rollback is not itself watched: more failures would not cascade, and a
        // person may publish again.
        let (status, body) = s
            .call_typed(
                Method::POST,
                "/v1/policy",
                Some(&s.admin),
                yaml,
                &good.replace("1.1.0", "1.3.0"),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// Issue 11: a shadow's tally is the whole fleet's: decisions made on either replica are
/// counted, whichever replica is asked.
#[tokio::test]
async fn a_shadow_tally_counts_every_replica() {
    let Some((first, second)) = pg_replicas("shadow").await else {
        return;
    };
    let a = server(first).await;
    let mut b = server(second).await;
    b.controller = a.controller.clone();
    b.admin = a.admin.clone();
    for s in [&a, &b] {
        tokio::spawn(Arc::clone(s.state.policies()).follow(Duration::from_millis(100)));
    }
    let candidate = POLICY.replace("version: 1.0.0", "version: 1.1.0").replace(
        r#"actions: ["ticket.*", email.send]"#,
        r#"actions: ["ticket.*"]"#,
    );
    let (status, body) = a
        .call_typed(
            Method::POST,
            "/v1/policy/shadow",
            Some(&a.admin),
            "application/yaml",
            &candidate,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.state.policies().shadow("acme").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "replica B never followed the shadow"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (s, n) in [(&a, 2), (&b, 3)] {
        for _ in 0..n {
            let (_, d) = s.decide(json!({"type": "email.send"})).await;
            assert_eq!(d["effect"], "allow");
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for s in [&a, &b] {
        loop {
            let (_, tally) = s
                .call(Method::GET, "/v1/policy/shadow", Some(&s.admin), "")
                .await;
            if tally["decisions"] == 5 {
                assert_eq!(tally["disagreements"][0]["count"], 5, "{tally}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{tally}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (status, ended) = b
        .call(Method::DELETE, "/v1/policy/shadow", Some(&b.admin), "")
        .await;
    assert_eq!(
        (status, ended["decisions"].as_u64()),
        (StatusCode::OK, Some(5)),
        "{ended}"
    );
    let events = a.events(kind::POLICY_SHADOW_ENDED).await;
    assert_eq!(events[0].event.detail["decisions"], 5);
}

/// Issue 11, as an attacker would try the lifecycle routes: another tenant's versions stay
/// out of reach, a revoked admin key changes nothing, and two replicas publishing the same
/// version at once publish it once.
#[tokio::test]
async fn the_lifecycle_routes_hold_against_other_tenants_revoked_keys_and_races() {
    let Some((first, second)) = pg_replicas("race").await else {
        return;
    };
    let a = server(first).await;
    let mut b = server(second).await;
    b.admin = a.admin.clone();
    let yaml = "application/yaml";
    let v2 = POLICY.replace("version: 1.0.0", "version: 2.0.0");
    // Two replicas, the same new version, at once: one publish, one refusal, one event.
    let (ra, rb) = tokio::join!(
        a.call_typed(Method::POST, "/v1/policy", Some(&a.admin), yaml, &v2),
        b.call_typed(Method::POST, "/v1/policy", Some(&b.admin), yaml, &v2),
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert!(
        statuses == [StatusCode::OK, StatusCode::CREATED]
            || statuses == [StatusCode::CREATED, StatusCode::CONFLICT],
        "{ra:?} {rb:?}"
    );
    let published: Vec<_> = a
        .events(kind::POLICY_PUBLISHED)
        .await
        .into_iter()
        .filter(|e| e.event.tenant == "acme")
        .collect();
    assert_eq!(published.len(), 1);

    // Another tenant's admin sees and changes only its own history.
    let globex = a.key("globex", vec![Role::Admin], None).await;
    let (status, body) = a
        .call(Method::GET, "/v1/policy/versions/1", Some(&globex), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = a
        .call(
            Method::GET,
            "/v1/policy/diff?from=1&tenant=acme",
            Some(&globex),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = a
        .call(
            Method::POST,
            "/v1/policy/rollback?tenant=acme",
            Some(&globex),
            r#"{"version": "1"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A revoked admin key publishes nothing and is audited as a failed authentication.
    let id = keys::parse_token(&a.admin).unwrap().0.to_owned();
    assert!(a.store.revoke_key(&id, 2).await.unwrap());
    let v3 = POLICY.replace("version: 1.0.0", "version: 3.0.0");
    for s in [&a, &b] {
        let (status, _) = s
            .call_typed(Method::POST, "/v1/policy", Some(&s.admin), yaml, &v3)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = s
            .call(Method::DELETE, "/v1/policy/shadow", Some(&s.admin), "")
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (_, active) = a
        .call(Method::GET, "/v1/policy", Some(&a.operator), "")
        .await;
    assert_eq!(active["version"], "1.0.0", "default's, untouched");
    let (_, acme) = a
        .call(Method::GET, "/v1/policy?tenant=acme", Some(&a.operator), "")
        .await;
    assert_eq!(acme["version"], "2.0.0");
}
