//! The web approvals inbox through the router (`oneshot`), as a browser without JavaScript
//! would use it — cookies, forms, redirects — on a SQLite file, SQLite in memory and, when
//! `WARDEN_TEST_DATABASE_URL` is set, PostgreSQL in a schema of its own (with a second
//! replica for the event stream). crates/warden/tests/inbox.rs drives the real binary in a
//! real browser.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers, not shipped code

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use warden_server::keys::{self, KeySpec, Role};
use warden_server::{AppState, Limits};
use warden_store::{Event, EventFilter, Store, kind};

mod common;
use common::{Place, places};

const POLICY: &str = r#"
version: 1.0.0
default: deny
proposals: on
rules:
  - id: legal-escalation
    actions: [ticket.escalate]
    effect: require_approval
    approval: {approvers: [legal], expires_in: 4h}
    reason: legal-sensitive tickets need a human before escalation
  - id: big-refund
    actions: [payment.refund]
    effect: require_approval
    approval: {approvers: [legal], quorum: 2}
audit:
  keep: [action.target.id, context.ticket.priority]
  redact: [context.user.email]
"#;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Server {
    app: Router,
    store: Arc<dyn Store>,
    state: AppState,
    _policies: tempfile::TempDir,
}

fn limits() -> Limits {
    Limits {
        key_cache_ttl: Duration::ZERO,
        ..Limits::default()
    }
}

async fn server(place: &Place, limits: Limits) -> Server {
    let r = common::replica(place, &[("default", POLICY)], limits, |s| s).await;
    Server {
        app: r.app,
        store: r.store,
        state: r.state,
        _policies: r.policies,
    }
}

/// An answer: status, headers and body as text.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// The `Set-Cookie` of cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of the first `name="csrf"` field on the page.
    fn csrf(&self) -> String {
        hidden(&self.body, "csrf")
    }

    fn signed_in(&self) -> bool {
        self.body.contains("Signed in as")
    }
}

/// The value of the first hidden field `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// A cookie's `name=value` from its `Set-Cookie`.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Form encoding: unreserved characters as they are, spaces as `+`, the rest `%XX`.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Server {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: &str) -> Answer {
        let mut request = Request::get(path);
        if !cookie.is_empty() {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, cookie: &str, fields: &[(&str, &str)]) -> Answer {
        let mut request =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if !cookie.is_empty() {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::from(form_body(fields))).unwrap())
            .await
    }

    /// Signs in with `key` as a browser does: the form, its cookie, the post.
    async fn try_sign_in(&self, key: &str) -> Answer {
        let form = self.get("/", "").await;
        assert_eq!(form.status, StatusCode::OK);
        let cookie = pair(&form.set_cookie("warden_sign_in").unwrap());
        self.post(
            "/inbox/sign-in",
            &cookie,
            &[("csrf", &form.csrf()), ("key", key)],
        )
        .await
    }

    /// Signs in and returns the session cookie (`warden_session=…`).
    async fn sign_in(&self, key: &str) -> String {
        let answer = self.try_sign_in(key).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.header("location"), "/");
        pair(&answer.set_cookie("warden_session").unwrap())
    }

    async fn key(
        &self,
        tenant: &str,
        roles: Vec<Role>,
        user: Option<&str>,
        agent: Option<&str>,
    ) -> String {
        let spec = KeySpec {
            tenant: tenant.into(),
            roles,
            user: user.map(str::to_owned),
            groups: if user.is_some() {
                vec!["legal".into()]
            } else {
                vec![]
            },
            agent: agent.map(str::to_owned),
            label: None,
        };
        keys::create(self.store.as_ref(), spec, "test", 1)
            .await
            .unwrap()
            .0
            .token
    }

    async fn approver(&self, user: &str) -> String {
        self.key("acme", vec![Role::Approver], Some(user), None)
            .await
    }

    async fn controller(&self) -> String {
        self.key("acme", vec![Role::Controller], None, Some("*"))
            .await
    }

    /// Asks for a decision that needs approval (by `support-bot` unless the action names an
    /// agent); returns the approval id.
    async fn pending(&self, controller: &str, mut action: Value) -> String {
        if action.get("agent").is_none() {
            action["agent"] = json!("support-bot");
        }
        let (status, body) = self
            .api(Method::POST, "/v1/decisions", controller, action)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["effect"], "require_approval", "{body}");
        body["approval"]["id"].as_str().unwrap().to_owned()
    }

    async fn api(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        common::call(&self.app, method, path, token, body).await
    }

    async fn approval(&self, id: &str) -> warden_store::ApprovalRecord {
        self.store.approval("acme", id).await.unwrap().unwrap()
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

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn only_approver_keys_that_name_a_user_can_sign_in() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        for (what, key) in [
            ("a controller key", s.controller().await),
            (
                "an admin key",
                s.key("acme", vec![Role::Admin], None, None).await,
            ),
        ] {
            let answer = s.try_sign_in(&key).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}");
            assert!(
                answer.body.contains("Only approver keys"),
                "{what}: {}",
                answer.body
            );
            assert!(answer.set_cookie("warden_session").is_none(), "{what}");
        }
        // A key that does not verify fails like a bad bearer key: 401, audited.
        let alice = s.approver("alice").await;
        let wrong = format!("{}x", &alice[..alice.len() - 1]);
        let answer = s.try_sign_in(&wrong).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(answer.body.contains("That key was not accepted."));
        assert!(answer.set_cookie("warden_session").is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let failures = s.events(kind::AUTH_FAILURE).await;
        assert_eq!(
            failures.last().unwrap().event.detail["reason"],
            "wrong_secret"
        );
        assert_eq!(
            failures.last().unwrap().event.detail["path"],
            "/inbox/sign-in"
        );
        assert!(s.events(kind::INBOX_SIGNED_IN).await.is_empty());

        let cookie = s.sign_in(&alice).await;
        let page = s.get("/", &cookie).await;
        assert!(page.signed_in(), "{}", page.body);
        assert!(page.body.contains("alice"));
    }
}

#[tokio::test]
async fn the_session_cookie_is_http_only_strict_and_secure_behind_tls_and_never_the_key() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        let alice = s.approver("alice").await;
        let answer = s.try_sign_in(&alice).await;
        let set = answer.set_cookie("warden_session").unwrap();
        assert!(set.contains("; HttpOnly"), "{set}");
        assert!(set.contains("; SameSite=Strict"), "{set}");
        assert!(set.contains("; Path=/"), "{set}");
        assert!(!set.contains("Secure"), "plain HTTP: {set}");
        let value = pair(&set)["warden_session=".len()..].to_owned();
        assert!(value.len() >= 43, "{value}");
        let secret = alice.rsplit('_').next().unwrap();
        assert!(!set.contains(&alice) && !set.contains(secret), "{set}");
        // The store keeps the id's hash, not the id.
        let stored = s.store.session(&sha256_hex(&value)).await.unwrap().unwrap();
        assert!(s.store.session(&value).await.unwrap().is_none());
        assert!(alice.contains(&stored.key_id));
        let events = s.events(kind::INBOX_SIGNED_IN).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.detail["user"], "alice");
        assert!(!events[0].event.detail.to_string().contains(&value));

        // Behind a TLS proxy (it says so), or with --inbox-secure-cookies: Secure.
        let form = s.get("/", "").await;
        let request = Request::post("/inbox/sign-in")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("x-forwarded-proto", "https")
            .header(
                header::COOKIE,
                pair(&form.set_cookie("warden_sign_in").unwrap()),
            )
            .body(Body::from(form_body(&[
                ("csrf", &form.csrf()),
                ("key", &alice),
            ])))
            .unwrap();
        let answer = s.send(request).await;
        assert!(
            answer
                .set_cookie("warden_session")
                .unwrap()
                .ends_with("; Secure")
        );
        let secure = server(
            &place,
            Limits {
                inbox_secure_cookies: true,
                ..limits()
            },
        )
        .await;
        let answer = secure.try_sign_in(&alice).await;
        assert!(
            answer
                .set_cookie("warden_session")
                .unwrap()
                .ends_with("; Secure")
        );
        assert!(
            form.set_cookie("warden_sign_in")
                .unwrap()
                .contains("HttpOnly; SameSite=Strict")
        );
    }
}

#[tokio::test]
async fn every_inbox_answer_sets_a_strict_content_security_policy() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        let cookie = s.sign_in(&s.approver("alice").await).await;
        let answers = [
            ("the sign-in page", s.get("/", "").await),
            ("the inbox", s.get("/", &cookie).await),
            ("the script", s.get("/inbox/app.js", "").await),
            ("the style", s.get("/inbox/app.css", "").await),
            (
                "a refused form",
                s.post("/inbox/approvals/x/approve", &cookie, &[]).await,
            ),
            ("a refused stream", s.get("/inbox/events", "").await),
        ];
        for (what, answer) in answers {
            assert_eq!(answer.header("content-security-policy"), CSP, "{what}");
            assert_eq!(answer.header("x-content-type-options"), "nosniff", "{what}");
            assert_eq!(answer.header("referrer-policy"), "no-referrer", "{what}");
            assert_eq!(answer.header("cache-control"), "no-store", "{what}");
            assert_eq!(answer.header("x-frame-options"), "DENY", "{what}");
        }
        let script = s.get("/inbox/app.js", "").await;
        assert!(script.header("content-type").starts_with("text/javascript"));
        assert!(script.body.contains("EventSource"));
        let page = s.get("/", &cookie).await;
        assert!(page.header("content-type").starts_with("text/html"));
        assert!(
            !page.body.contains("<script>") && !page.body.contains(" style="),
            "nothing inline"
        );
        // The JSON API keeps its own answers.
        let (status, _) = s.api(Method::GET, "/openapi.json", "", Value::Null).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_wrong_or_missing_csrf_token_is_refused_and_changes_nothing() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        let controller = s.controller().await;
        let id = s
            .pending(&controller, json!({"type": "ticket.escalate"}))
            .await;
        let alice = s.sign_in(&s.approver("alice").await).await;
        let bob = s.sign_in(&s.approver("bob").await).await;
        let bobs_token = s.get("/", &bob).await.csrf();
        let path = format!("/inbox/approvals/{id}/approve");
        for (what, fields) in [
            ("no token", vec![("reason", "ok")]),
            (
                "a wrong token",
                vec![("csrf", "0123456789abcdef"), ("reason", "ok")],
            ),
            (
                "another session's token",
                vec![("csrf", bobs_token.as_str()), ("reason", "ok")],
            ),
        ] {
            let answer = s.post(&path, &alice, &fields).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}");
            assert!(
                answer.body.contains("nothing was changed"),
                "{what}: {}",
                answer.body
            );
            assert!(answer.signed_in(), "{what}: still signed in");
        }
        // Sign-out is a form too: refused without its token, and the session goes on.
        let answer = s.post("/inbox/sign-out", &alice, &[]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(s.get("/", &alice).await.signed_in());
        assert_eq!(s.approval(&id).await.status, "pending");
        assert!(s.events(kind::APPROVAL_VOTE).await.is_empty());

        // The sign-in form's token must match its cookie.
        let form = s.get("/", "").await;
        let key = s.approver("carol").await;
        let answer = s
            .post(
                "/inbox/sign-in",
                "",
                &[("csrf", &form.csrf()), ("key", &key)],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(answer.set_cookie("warden_session").is_none());
        let other = s.get("/", "").await;
        let answer = s
            .post(
                "/inbox/sign-in",
                &pair(&other.set_cookie("warden_sign_in").unwrap()),
                &[("csrf", &form.csrf()), ("key", &key)],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        // And a form body is a form: JSON is refused.
        let request = Request::post(&path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, &alice)
            .body(Body::from(
                json!({"csrf": s.get("/", &alice).await.csrf()}).to_string(),
            ))
            .unwrap();
        assert_eq!(
            s.send(request).await.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(s.approval(&id).await.status, "pending");
    }
}

/// A form that says one thing twice, names a field the form has not, or is larger than a
/// body may be is refused and changes nothing; a decision posted twice is decided once.
#[tokio::test]
async fn repeated_unknown_or_oversized_fields_and_replays_change_nothing() {
    for place in places("inbox").await {
        let limits = Limits {
            body_bytes: 4096,
            ..limits()
        };
        let s = server(&place, limits).await;
        let controller = s.controller().await;
        let id = s
            .pending(&controller, json!({"type": "ticket.escalate"}))
            .await;
        let alice = s.sign_in(&s.approver("alice").await).await;
        let csrf = s.get("/", &alice).await.csrf();
        let path = format!("/inbox/approvals/{id}/reject");
        let long = "x".repeat(8192);
        for (what, fields, status) in [
            (
                "a repeated reason",
                vec![("csrf", csrf.as_str()), ("reason", "a"), ("reason", "b")],
                StatusCode::BAD_REQUEST,
            ),
            (
                "a repeated token",
                vec![
                    ("csrf", csrf.as_str()),
                    ("csrf", csrf.as_str()),
                    ("reason", "a"),
                ],
                StatusCode::BAD_REQUEST,
            ),
            (
                "an unknown field",
                vec![
                    ("csrf", csrf.as_str()),
                    ("reason", "a"),
                    ("status", "approved"),
                ],
                StatusCode::BAD_REQUEST,
            ),
            (
                "a body over the limit",
                vec![("csrf", csrf.as_str()), ("reason", long.as_str())],
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ] {
            let answer = s.post(&path, &alice, &fields).await;
            assert_eq!(answer.status, status, "{what}: {}", answer.body);
            assert_eq!(s.approval(&id).await.status, "pending", "{what}");
        }
        assert!(s.events(kind::APPROVAL_VOTE).await.is_empty());

        // Posted twice (a double click, a replayed request): decided once.
        let fields = [("csrf", csrf.as_str()), ("reason", "not now")];
        let first = s.post(&path, &alice, &fields).await;
        assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
        let again = s.post(&path, &alice, &fields).await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
        assert!(again.body.contains("Not done"), "{}", again.body);
        assert_eq!(s.approval(&id).await.status, "rejected");
        assert_eq!(s.events(kind::APPROVAL_VOTE).await.len(), 1);
    }
}

#[tokio::test]
async fn approving_rejecting_and_answering_go_through_the_api_with_the_signed_in_key() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        let controller = s.controller().await;
        let alice_key = s.approver("alice").await;
        let alice = s.sign_in(&alice_key).await;
        let first = s
            .pending(&controller, json!({"type": "ticket.escalate", "target": {"type": "ticket", "id": "T-1"}, "agent": "support-bot", "on_behalf_of": "user-9", "confidence": 0.9}))
            .await;
        let second = s
            .pending(
                &controller,
                json!({"type": "ticket.escalate", "agent": "support-bot"}),
            )
            .await;
        let page = s.get("/", &alice).await;
        for text in [
            first.as_str(),
            second.as_str(),
            "ticket.escalate",
            "ticket T-1",
            "support-bot",
            "user-9",
            "legal-escalation",
            "legal-sensitive tickets need a human before escalation",
            "0.9",
            "Waiting for you (2)",
        ] {
            assert!(
                page.body.contains(text),
                "{text} missing from {}",
                page.body
            );
        }
        let csrf = page.csrf();

        let answer = s
            .post(
                &format!("/inbox/approvals/{first}/approve"),
                &alice,
                &[("csrf", &csrf), ("reason", "checked")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.header("location"), "/?notice=approved");
        let approved = s.approval(&first).await;
        assert_eq!(approved.status, "approved");
        assert_eq!(approved.votes[0].user, "alice");
        assert!(
            alice_key.contains(&approved.votes[0].key_id),
            "the signed-in key voted"
        );
        let votes = s.events(kind::APPROVAL_VOTE).await;
        assert_eq!(votes.len(), 1);
        assert_eq!(votes[0].event.detail["reason"], "checked");
        let (_, decision) = s
            .api(
                Method::GET,
                &format!("/v1/decisions/{}", approved.decision_id.unwrap()),
                &controller,
                Value::Null,
            )
            .await;
        assert_eq!(decision["effect"], "allow", "{decision}");
        let page = s.get("/?notice=approved", &alice).await;
        assert!(
            page.body
                .contains("Approved: the waiting caller has its answer.")
        );

        // A rejection needs a reason: without one the API's refusal is shown, nothing changes.
        let path = format!("/inbox/approvals/{second}/reject");
        let answer = s
            .post(&path, &alice, &[("csrf", &csrf), ("reason", "  ")])
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(
            answer.body.contains("a rejection needs a"),
            "{}",
            answer.body
        );
        assert_eq!(s.approval(&second).await.status, "pending");
        let answer = s
            .post(
                &path,
                &alice,
                &[("csrf", &csrf), ("reason", "not without the customer")],
            )
            .await;
        assert_eq!(answer.header("location"), "/?notice=rejected");
        let rejected = s.approval(&second).await;
        assert_eq!(rejected.status, "rejected");
        assert_eq!(rejected.reason.as_deref(), Some("not without the customer"));
        // Deciding again is the API's 409, shown with the outcome.
        let answer = s
            .post(&path, &alice, &[("csrf", &csrf), ("reason", "again")])
            .await;
        assert_eq!(answer.status, StatusCode::CONFLICT);
        assert!(answer.body.contains("Not done:"), "{}", answer.body);

        // Recently decided, filterable by kind and status.
        let page = s.get("/", &alice).await;
        assert!(page.body.contains(&format!("decided-{first}")));
        assert!(page.body.contains(&format!("decided-{second}")));
        let page = s.get("/?kind=approval&status=rejected", &alice).await;
        assert!(page.body.contains(&format!("decided-{second}")));
        assert!(!page.body.contains(&format!("decided-{first}")));
        let page = s.get("/?kind=proposal", &alice).await;
        assert!(!page.body.contains(&format!("decided-{second}")));
        assert_eq!(
            s.get("/?kind=nonsense", &alice).await.status,
            StatusCode::BAD_REQUEST
        );

        // Separation of duties holds: the beneficiary may not approve.
        let beneficiary = s.sign_in(&s.approver("user-9").await).await;
        let third = s
            .pending(
                &controller,
                json!({"type": "ticket.escalate", "on_behalf_of": "user-9"}),
            )
            .await;
        let token = s.get("/", &beneficiary).await.csrf();
        let answer = s
            .post(
                &format!("/inbox/approvals/{third}/approve"),
                &beneficiary,
                &[("csrf", &token)],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(s.approval(&third).await.status, "pending");

        // A quorum of two: the first approval is counted, not final.
        let refund = s
            .pending(&controller, json!({"type": "payment.refund"}))
            .await;
        let answer = s
            .post(
                &format!("/inbox/approvals/{refund}/approve"),
                &alice,
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(answer.header("location"), "/?notice=vote");
        assert_eq!(s.approval(&refund).await.status, "pending");
        assert!(
            s.get("/", &alice)
                .await
                .body
                .contains("1 of 2 approvals so far")
        );

        // A question is answered by choosing one of its options.
        let agent = s
            .key("acme", vec![Role::Agent], None, Some("support-bot"))
            .await;
        let (status, asked) = s
            .api(
                Method::POST,
                "/v1/questions",
                &agent,
                json!({"question": "Refund or replace?", "options": ["refund", "replace"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{asked}");
        let question = asked["id"].as_str().unwrap();
        let page = s.get("/", &alice).await;
        assert!(page.body.contains("Refund or replace?"));
        let path = format!("/inbox/questions/{question}/answer");
        let answer = s
            .post(&path, &alice, &[("csrf", &csrf), ("answer", "neither")])
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "not an option");
        let answer = s
            .post(&path, &alice, &[("csrf", &csrf), ("answer", "replace")])
            .await;
        assert_eq!(answer.header("location"), "/?notice=answered");
        let answered = s.approval(question).await;
        assert_eq!(
            (answered.status.as_str(), answered.answer.as_deref()),
            ("answered", Some("replace"))
        );
        assert_eq!(s.events(kind::QUESTION_OUTCOME).await.len(), 1);
    }
}

#[tokio::test]
async fn another_tenants_approval_is_not_found() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        let id = s
            .pending(&s.controller().await, json!({"type": "ticket.escalate"}))
            .await;
        let other = s
            .key("globex", vec![Role::Approver], Some("gina"), None)
            .await;
        let gina = s.sign_in(&other).await;
        let page = s.get("/", &gina).await;
        assert!(!page.body.contains(&id), "not listed");
        let csrf = page.csrf();
        for (path, field) in [
            (format!("/inbox/approvals/{id}/approve"), "reason"),
            (format!("/inbox/approvals/{id}/reject"), "reason"),
            (format!("/inbox/questions/{id}/answer"), "answer"),
        ] {
            let answer = s
                .post(&path, &gina, &[("csrf", &csrf), (field, "mine now")])
                .await;
            assert_eq!(
                answer.status,
                StatusCode::NOT_FOUND,
                "{path}: {}",
                answer.body
            );
        }
        assert_eq!(s.approval(&id).await.status, "pending");
    }
}

/// A session signed in on one replica works on another (it is in the store), and ends on
/// both at sign-out; two approvers deciding one approval at once on two replicas decide it
/// once.
#[tokio::test]
async fn sessions_hold_on_every_replica_and_racing_decisions_decide_once() {
    for place in places("inbox").await {
        let a = server(&place, limits()).await;
        let b = server(&place, limits()).await;
        let controller = a.controller().await;
        let alice = a.sign_in(&a.approver("alice").await).await;
        let bob = b.sign_in(&b.approver("bob").await).await;
        assert!(b.get("/", &alice).await.signed_in(), "alice's session on b");

        let id = a
            .pending(&controller, json!({"type": "ticket.escalate"}))
            .await;
        let path = format!("/inbox/approvals/{id}/approve");
        let (alice_csrf, bob_csrf) = (
            b.get("/", &alice).await.csrf(),
            a.get("/", &bob).await.csrf(),
        );
        // Alice decides through b, Bob through a, at once.
        let alice_form = [("csrf", alice_csrf.as_str()), ("reason", "ok")];
        let bob_form = [("csrf", bob_csrf.as_str()), ("reason", "ok")];
        let (first, second) = tokio::join!(
            b.post(&path, &alice, &alice_form),
            a.post(&path, &bob, &bob_form),
        );
        let mut statuses = [first.status, second.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::SEE_OTHER, StatusCode::CONFLICT],
            "{} / {}",
            first.body,
            second.body
        );
        assert_eq!(a.approval(&id).await.status, "approved");
        assert_eq!(a.events(kind::APPROVAL_VOTE).await.len(), 1);

        // Signed out on a: gone on b too.
        let csrf = a.get("/", &alice).await.csrf();
        let out = a.post("/inbox/sign-out", &alice, &[("csrf", &csrf)]).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER, "{}", out.body);
        assert!(!b.get("/", &alice).await.signed_in());
        assert!(b.get("/", &bob).await.signed_in(), "bob's session goes on");
    }
}

#[tokio::test]
async fn a_revoked_keys_session_stops_working() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        let id = s
            .pending(&s.controller().await, json!({"type": "ticket.escalate"}))
            .await;
        let key = s.approver("alice").await;
        let cookie = s.sign_in(&key).await;
        let page = s.get("/", &cookie).await;
        assert!(page.signed_in());
        let key_id = key.split('_').nth(1).unwrap();
        assert!(s.store.revoke_key(key_id, 2).await.unwrap());
        let answer = s
            .post(
                &format!("/inbox/approvals/{id}/approve"),
                &cookie,
                &[("csrf", &page.csrf())],
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(answer.body.contains("Your session has ended"));
        assert_eq!(s.approval(&id).await.status, "pending");
        assert!(!s.get("/", &cookie).await.signed_in());
        assert_eq!(
            s.get("/inbox/events", &cookie).await.status,
            StatusCode::UNAUTHORIZED
        );
        // The session is gone from the store, and a new sign-in with the key fails.
        let value = &cookie["warden_session=".len()..];
        assert!(s.store.session(&sha256_hex(value)).await.unwrap().is_none());
        assert_eq!(s.try_sign_in(&key).await.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn sessions_end_when_idle_at_their_lifetime_and_at_sign_out() {
    for place in places("inbox").await {
        // Idle: used every 0.6 s it lives past its 1.5 s idle timeout; left alone it ends.
        let s = server(
            &place,
            Limits {
                inbox_idle_timeout: Duration::from_millis(1500),
                ..limits()
            },
        )
        .await;
        let key = s.approver("alice").await;
        let cookie = s.sign_in(&key).await;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert!(s.get("/", &cookie).await.signed_in(), "kept alive by use");
        }
        tokio::time::sleep(Duration::from_millis(1700)).await;
        assert!(!s.get("/", &cookie).await.signed_in(), "idle too long");

        // Lifetime: used all along, it still ends.
        let s = server(
            &place,
            Limits {
                inbox_session_lifetime: Duration::from_secs(2),
                ..limits()
            },
        )
        .await;
        let answer = s.try_sign_in(&key).await;
        assert!(
            answer
                .set_cookie("warden_session")
                .unwrap()
                .contains("Max-Age=2;")
        );
        let cookie = pair(&answer.set_cookie("warden_session").unwrap());
        assert!(s.get("/", &cookie).await.signed_in());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(s.get("/", &cookie).await.signed_in());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!s.get("/", &cookie).await.signed_in(), "past its lifetime");

        // Sign-out deletes the session: the cookie names nothing afterwards.
        let s = server(&place, limits()).await;
        let cookie = s.sign_in(&key).await;
        let csrf = s.get("/", &cookie).await.csrf();
        let answer = s.post("/inbox/sign-out", &cookie, &[("csrf", &csrf)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert!(
            answer
                .set_cookie("warden_session")
                .unwrap()
                .contains("Max-Age=0")
        );
        let page = s.get(answer.header("location"), &cookie).await;
        assert!(!page.signed_in());
        assert!(page.body.contains("You are signed out."));
        assert_eq!(s.events(kind::INBOX_SIGNED_OUT).await.len(), 1);
    }
}

#[tokio::test]
async fn hostile_text_is_escaped_and_payload_and_context_stay_out() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        let controller = s.controller().await;
        let hostile = "<script>alert(1)</script>";
        let id = s
            .pending(
                &controller,
                json!({
                    "type": "ticket.escalate",
                    "agent": hostile,
                    "on_behalf_of": "\"><img src=x onerror=alert(2)>",
                    "target": {"type": "ticket", "id": "<b>T-1</b>"},
                    "payload": {"note": "s3cr3t-payload"},
                    "context": {"ticket": {"priority": "high"}, "user": {"email": "jane@example.com"}}
                }),
            )
            .await;
        let agent = s.key("acme", vec![Role::Agent], None, Some("bot")).await;
        let (status, _) = s
            .api(
                Method::POST,
                "/v1/questions",
                &agent,
                json!({"question": "<i>which</i>?", "options": ["<u>a</u>", "b"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let alice = s.sign_in(&s.approver("alice").await).await;
        let page = s.get("/", &alice).await;
        for raw in [
            hostile,
            "<img src=x",
            "<b>T-1</b>",
            "<i>which</i>",
            "<u>a</u>",
        ] {
            assert!(!page.body.contains(raw), "{raw} is not escaped");
        }
        for escaped in [
            "&lt;script&gt;alert(1)&lt;/script&gt;",
            "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;",
            "&lt;b&gt;T-1&lt;/b&gt;",
            "&lt;i&gt;which&lt;/i&gt;?",
            "value=\"&lt;u&gt;a&lt;/u&gt;\"",
        ] {
            assert!(page.body.contains(escaped), "{escaped} missing");
        }
        // Only audit.keep shows: the kept priority, never the payload or the email.
        assert!(page.body.contains("context.ticket.priority"));
        assert!(page.body.contains("high"));
        assert!(!page.body.contains("s3cr3t-payload"));
        assert!(!page.body.contains("jane@example.com"));
        // A hostile reason is escaped in the recently decided list.
        let csrf = page.csrf();
        s.post(
            &format!("/inbox/approvals/{id}/reject"),
            &alice,
            &[("csrf", &csrf), ("reason", "<script>x()</script>")],
        )
        .await;
        let page = s.get("/", &alice).await;
        assert!(!page.body.contains("<script>x()"));
        assert!(page.body.contains("&lt;script&gt;x()&lt;/script&gt;"));
    }
}

/// The next server-sent event's name and data, within `wait`.
async fn next_event(
    body: &mut Body,
    buffer: &mut String,
    wait: Duration,
) -> Option<(String, String)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim().to_owned())
            };
            match field("event") {
                Some(event) => return Some((event, field("data").unwrap_or_default())),
                None => continue, // a keep-alive comment
            }
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .ok()??
            .ok()?;
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn the_event_stream_says_when_something_arrives_or_is_decided_on_any_replica() {
    for place in places("inbox").await {
        let a = server(&place, limits()).await;
        // Another replica on the same database; a SQLite file has one replica (its signals
        // are in process), so there the same one.
        let b = server(&place, limits()).await;
        let other = if matches!(place, Place::Sqlite(..)) {
            &a
        } else {
            &b
        };
        let controller = other.controller().await;
        let alice = a.sign_in(&a.approver("alice").await).await;
        let page = a.get("/", &alice).await;
        let events = hidden_attr(&page.body, "data-events");
        let version = hidden_attr(&page.body, "data-version");
        assert!(events.ends_with(&format!("since={version}")), "{events}");
        let request = Request::get(events.replace("&amp;", "&"))
            .header(header::COOKIE, &alice)
            .body(Body::empty())
            .unwrap();
        let response = a.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["content-security-policy"], CSP);
        let mut body = response.into_body();
        let mut buffer = String::new();
        // Nothing changed since the page: nothing is said.
        assert!(
            next_event(&mut body, &mut buffer, Duration::from_millis(500))
                .await
                .is_none()
        );

        // A new approval, opened through the other replica.
        let id = other
            .pending(&controller, json!({"type": "ticket.escalate"}))
            .await;
        let (event, data) = next_event(&mut body, &mut buffer, Duration::from_secs(10))
            .await
            .expect("changed");
        assert_eq!(event, "changed");
        assert_ne!(data, version);
        let page = a.get("/", &alice).await;
        assert!(page.body.contains(&id));
        assert_eq!(hidden_attr(&page.body, "data-version"), data);

        // Decided elsewhere (through the API on the other replica).
        let bob = other.approver("bob").await;
        let (status, _) = other
            .api(
                Method::POST,
                &format!("/v1/approvals/{id}/reject"),
                &bob,
                json!({"reason": "no"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (event, _) = next_event(&mut body, &mut buffer, Duration::from_secs(10))
            .await
            .expect("changed");
        assert_eq!(event, "changed");
        assert!(
            !a.get("/", &alice)
                .await
                .body
                .contains(&format!("approval-{id}"))
        );

        // A page that is behind hears at once when it connects; at shutdown the stream ends.
        let request = Request::get(format!("/inbox/events?since={version}"))
            .header(header::COOKIE, &alice)
            .body(Body::empty())
            .unwrap();
        let mut body = a.app.clone().oneshot(request).await.unwrap().into_body();
        let mut buffer = String::new();
        let (event, _) = next_event(&mut body, &mut buffer, Duration::from_secs(5))
            .await
            .expect("changed at once");
        assert_eq!(event, "changed");
        a.state.waiters().close();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while body.frame().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the stream ends when the server shuts down");
    }
}

/// The value of attribute `name` in `html`.
fn hidden_attr(html: &str, name: &str) -> String {
    let marker = format!("{name}=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// An allow for an action the default denies: broadening, so it waits for a human.
fn allow_export(id: &str, action: &str) -> Value {
    json!({
        "rationale": "support-bot must export the CRM account it works on",
        "risks": ["exports of customer data"],
        "confidence": 0.8,
        "changes": [{"op": "add_rule", "rule": {
            "id": id, "actions": [action], "agents": ["support-bot"], "effect": "allow"
        }}]
    })
}

/// Needs the prover: a proposal waiting for a human is shown with its diff, classification,
/// counterexample, findings and impact, and approved only with the token of that analysis.
#[tokio::test]
async fn proposals_are_shown_with_their_analysis_and_decided_with_its_review_token() {
    for place in places("inbox").await {
        let s = server(&place, limits()).await;
        let agent = s
            .key("acme", vec![Role::Agent], None, Some("support-bot"))
            .await;
        let mut ids = Vec::new();
        // Two subjects, so the second does not supersede the first.
        for (rule, action) in [
            ("allow-export", "crm.export"),
            ("allow-import", "crm.import"),
        ] {
            let (status, body) = s
                .api(
                    Method::POST,
                    "/v1/proposals",
                    &agent,
                    allow_export(rule, action),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["status"], "needs_human", "{body}");
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
        let alice = s.sign_in(&s.approver("alice").await).await;
        let page = s.get("/", &alice).await;
        let (first, second) = (&ids[0], &ids[1]);
        let card = &page.body[page.body.find(&format!("proposal-{first}")).unwrap()..];
        let card = &card[..card.find("</article>").unwrap()];
        for text in [
            "broadening",
            "+ rule allow-export",
            "crm.export",
            "Counterexamples",
            "support-bot must export the CRM account it works on",
            "exports of customer data",
            "recent decisions replayed",
        ] {
            assert!(card.contains(text), "{text} missing from {card}");
        }
        let token = hidden(card, "review_token");
        let csrf = page.csrf();

        // The proposing agent's own approver key may not decide it.
        let own = s.sign_in(&s.approver("support-bot").await).await;
        let own_csrf = s.get("/", &own).await.csrf();
        let path = format!("/inbox/proposals/{first}/approve");
        let answer = s
            .post(
                &path,
                &own,
                &[("csrf", &own_csrf), ("review_token", &token)],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);

        // Another analysis's token is refused; nothing is applied.
        let answer = s
            .post(
                &path,
                &alice,
                &[("csrf", &csrf), ("review_token", &"0".repeat(64))],
            )
            .await;
        assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
        let (_, shown) = s
            .api(
                Method::GET,
                &format!("/v1/proposals/{first}"),
                &agent,
                Value::Null,
            )
            .await;
        assert_eq!(shown["status"], "needs_human");

        let answer = s
            .post(&path, &alice, &[("csrf", &csrf), ("review_token", &token)])
            .await;
        assert_eq!(
            answer.header("location"),
            "/?notice=proposal-approved",
            "{}",
            answer.body
        );
        let (_, shown) = s
            .api(
                Method::GET,
                &format!("/v1/proposals/{first}"),
                &agent,
                Value::Null,
            )
            .await;
        assert_eq!(shown["status"], "approved");
        assert_eq!(shown["decided_by"], "alice");
        assert_eq!(shown["version"], "1.0.1");

        // Rejecting needs a reason, which the agent reads.
        let path = format!("/inbox/proposals/{second}/reject");
        let answer = s.post(&path, &alice, &[("csrf", &csrf)]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        let answer = s
            .post(
                &path,
                &alice,
                &[("csrf", &csrf), ("reason", "one export rule is enough")],
            )
            .await;
        assert_eq!(answer.header("location"), "/?notice=proposal-rejected");
        let (_, shown) = s
            .api(
                Method::GET,
                &format!("/v1/proposals/{second}"),
                &agent,
                Value::Null,
            )
            .await;
        assert_eq!(shown["status"], "rejected");
        assert_eq!(shown["reason"], "one export rule is enough");
        let page = s.get("/?kind=proposal", &alice).await;
        assert!(page.body.contains(&format!("decided-{first}")));
        assert!(page.body.contains(&format!("decided-{second}")));
        assert!(page.body.contains("one export rule is enough"));
        assert_eq!(s.events(kind::PROPOSAL_DECIDED).await.len(), 2);
    }
}
