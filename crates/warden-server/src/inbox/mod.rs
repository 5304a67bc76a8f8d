//! The web approvals inbox (`GET /`, docs/INBOX.md): server-rendered pages where an
//! approver signs in with their key, sees what waits for them — approvals, questions,
//! proposals with their analysis — and decides, and a server-sent event stream that tells
//! the page when something arrived or was decided elsewhere.
//!
//! Key decisions:
//!
//! - **One code path for a decision.** A form's submission is turned into the JSON body
//!   the API takes and handed to the API's own route function (`routes::approvals::approve`,
//!   `routes::proposals::approve`, …) with the signed-in key as the caller. Quorum,
//!   separation of duties, the review token, the audit events and the waiters' wake-up are
//!   therefore exactly the API's; the inbox only renders the outcome.
//! - **Works without JavaScript.** Every action is a plain form post answered with a
//!   redirect (or with the page and the reason it failed); `/inbox/app.js` only adds the
//!   live list and the ticking expiry times. Every answer carries a strict
//!   Content-Security-Policy, so the page runs no script but that file.
//! - **The live list wakes on the store's approval signals** — the ones the long-polls
//!   use, carried between replicas by PostgreSQL `NOTIFY` — and tells the page only when
//!   what it shows changed, compared by [`view::Inbox::version`].

pub mod page;
pub mod session;
pub mod view;

use crate::body::JsonBody;
use crate::error::{ApiError, ErrorCode};
use crate::keys::Role;
use crate::routes;
use crate::state::{AppState, now_ms};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use page::Notice;
use serde_json::{Value, json};
use session::Session;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::time::Instant;
use view::{Filter, Inbox};
use warden_store::{NewEvent, kind};

/// Every inbox answer's Content-Security-Policy: scripts, styles and connections from this
/// origin only (no inline ones), no frames, forms posted only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// How often an open event stream checks that its session still holds.
const SESSION_CHECK: Duration = Duration::from_secs(30);
/// How long a stream lets a burst of signals settle before it looks.
const SETTLE: Duration = Duration::from_millis(150);

/// The pages, the form posts and the two static files; routed inside the request timeout
/// and the in-flight bound like every API route.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/inbox/sign-in", post(sign_in))
        .route("/inbox/sign-out", post(sign_out))
        .route("/inbox/approvals/{id}/approve", post(approve))
        .route("/inbox/approvals/{id}/reject", post(reject))
        .route("/inbox/questions/{id}/answer", post(answer))
        .route("/inbox/proposals/{id}/approve", post(approve_proposal))
        .route("/inbox/proposals/{id}/reject", post(reject_proposal))
        .route("/inbox/app.js", get(script))
        .route("/inbox/app.css", get(style))
        .layer(middleware::map_response(protect))
}

/// The event stream, which lives as long as the page: routed outside the request timeout
/// and the in-flight bound, holding a `--max-waiters` slot instead, like the long-polls.
pub fn events_router() -> Router<AppState> {
    Router::new()
        .route("/inbox/events", get(events))
        .layer(middleware::map_response(protect))
}

/// The headers every inbox answer carries.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page answering a failure, counted by its error code like the API's errors.
fn failed(status: StatusCode, code: &'static str, markup: maud::Markup) -> Response {
    let mut response = html(status, markup);
    response.extensions_mut().insert(ErrorCode(code));
    response
}

/// A 303 to `location`, setting `cookies`.
fn redirect(location: &str, cookies: Vec<(header::HeaderName, HeaderValue)>) -> Response {
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_owned())],
    )
        .into_response();
    for (name, value) in cookies {
        response.headers_mut().append(name, value);
    }
    response
}

/// The sign-in page with a fresh form token.
fn sign_in_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    message: Option<Notice>,
) -> Response {
    let (token, cookie) = session::sign_in_form(state, headers);
    let mut response = html(status, page::sign_in(&token, message.as_ref()));
    response.headers_mut().append(cookie.0, cookie.1);
    response
}

/// The inbox of `session`, with `message` above it.
async fn inbox_page(
    state: &AppState,
    session: &Session,
    filter: Filter,
    message: Option<Notice>,
    status: StatusCode,
) -> Response {
    match Inbox::gather(state, &session.caller, filter).await {
        Ok(inbox) => html(status, page::inbox(session, &inbox, message.as_ref())),
        Err(e) => error_page(&e),
    }
}

/// A page for an error with nothing else to show.
fn error_page(e: &ApiError) -> Response {
    failed(
        e.status(),
        e.code(),
        page::plain("Something went wrong", e.detail()),
    )
}

/// The sentence of a notice code a redirect carries (codes only, never free text).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "approved" => "Approved: the waiting caller has its answer.",
        "vote" => "Your approval is counted; more approvers are needed.",
        "rejected" => "Rejected: the waiting caller has its answer.",
        "answered" => "Answered: the agent has your answer.",
        "proposal-approved" => "Approved: the change is published as a new policy version.",
        "proposal-rejected" => "Proposal rejected: the agent reads your reason.",
        "signed-out" => "You are signed out.",
        _ => return None,
    })
}

/// `GET /`: the inbox, or the sign-in page.
async fn index(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let session = match session::current(&state, &headers).await {
        Ok(session) => session,
        Err(e) => return error_page(&e),
    };
    let parsed = Filter::parse(uri.query(), "notice");
    let Some(session) = session else {
        let notice = parsed
            .ok()
            .and_then(|(_, n)| n)
            .and_then(|n| notice_text(&n))
            .map(|t| Notice::Done(t.to_owned()));
        return sign_in_page(&state, &headers, StatusCode::OK, notice);
    };
    match parsed {
        Ok((filter, notice)) => {
            let notice = notice
                .and_then(|n| notice_text(&n))
                .map(|t| Notice::Done(t.to_owned()));
            inbox_page(&state, &session, filter, notice, StatusCode::OK).await
        }
        Err(e) => {
            let notice = Some(Notice::Failed(e.detail().to_owned()));
            inbox_page(&state, &session, Filter::default(), notice, e.status()).await
        }
    }
}

/// A form's fields: only `allowed` names, each at most once, from an
/// `application/x-www-form-urlencoded` body.
fn form(
    headers: &HeaderMap,
    body: &[u8],
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !essence.is_some_and(|e| e.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the inbox takes only its own forms",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid_body", "the form is not valid UTF-8"))?;
    let fields = routes::query_pairs(Some(text), allowed).map_err(|e| {
        ApiError::bad_request("invalid_body", e.detail().replace("parameter", "field"))
    })?;
    Ok(fields.into_iter().collect())
}

/// What every form post of a signed-in page checks first: the session, the form, its CSRF
/// token. `Err` is the answer to send instead; in every such case nothing changed.
async fn submitted(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    allowed: &[&str],
) -> Result<(Session, HashMap<String, String>), Response> {
    let session = match session::current(state, headers).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            let notice = Notice::Failed(
                "Your session has ended, so nothing was changed: sign in again.".to_owned(),
            );
            return Err(sign_in_page(
                state,
                headers,
                StatusCode::UNAUTHORIZED,
                Some(notice),
            ));
        }
        Err(e) => return Err(error_page(&e)),
    };
    let fields = match form(headers, body, allowed) {
        Ok(fields) => fields,
        Err(e) => {
            let notice = Some(Notice::Failed(format!(
                "{}. Nothing was changed.",
                e.detail().trim_end_matches('.')
            )));
            return Err(inbox_page(state, &session, Filter::default(), notice, e.status()).await);
        }
    };
    let presented = fields.get("csrf").map_or("", String::as_str);
    if !session.csrf_matches(presented) {
        let notice = Some(Notice::Failed(
            "This form is out of date or did not come from this inbox, so nothing was changed: \
             try again from the page below."
                .to_owned(),
        ));
        let mut response = inbox_page(
            state,
            &session,
            Filter::default(),
            notice,
            StatusCode::FORBIDDEN,
        )
        .await;
        response.extensions_mut().insert(ErrorCode("csrf_mismatch"));
        return Err(response);
    }
    Ok((session, fields))
}

/// A JSON body for the API's route, as if its client had sent it.
fn json_body(value: Value) -> JsonBody {
    JsonBody(Bytes::from(value.to_string()))
}

/// The JSON body of a decision route: the form's reason, when it gave one.
fn with_reason(fields: &HashMap<String, String>) -> Value {
    match filled(fields, "reason") {
        Some(reason) => json!({"reason": reason}),
        None => json!({}),
    }
}

/// `field`, trimmed, if the form gave a non-blank one.
fn filled<'a>(fields: &'a HashMap<String, String>, field: &str) -> Option<&'a str> {
    fields
        .get(field)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// The answer to an API route's outcome: a redirect with its notice, or the inbox with
/// the route's refusal (its status and sentence) and nothing changed.
async fn after<T>(
    state: &AppState,
    session: &Session,
    outcome: Result<T, ApiError>,
    notice: impl FnOnce(&T) -> &'static str,
) -> Response {
    match outcome {
        Ok(done) => redirect(&format!("/?notice={}", notice(&done)), Vec::new()),
        Err(e) => {
            let message = Some(Notice::Failed(format!("Not done: {}", e.detail())));
            let mut response =
                inbox_page(state, session, Filter::default(), message, e.status()).await;
            response.extensions_mut().insert(ErrorCode(e.code()));
            response
        }
    }
}

/// `POST /inbox/approvals/{id}/approve`: `POST /v1/approvals/{id}/approve` as this key.
async fn approve(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let (session, fields) = match submitted(&state, &headers, &body, &["csrf", "reason"]).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let request = with_reason(&fields);
    let outcome = routes::approvals::approve(
        State(state.clone()),
        session.caller.clone(),
        id,
        Ok(json_body(request)),
    )
    .await
    .map(|axum::Json(view)| view);
    after(&state, &session, outcome, |view| {
        if view.status == warden_store::status::APPROVED {
            "approved"
        } else {
            "vote"
        }
    })
    .await
}

/// `POST /inbox/approvals/{id}/reject`: `POST /v1/approvals/{id}/reject` as this key.
async fn reject(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let (session, fields) = match submitted(&state, &headers, &body, &["csrf", "reason"]).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let request = with_reason(&fields);
    let outcome = routes::approvals::reject(
        State(state.clone()),
        session.caller.clone(),
        id,
        Ok(json_body(request)),
    )
    .await
    .map(|_| ());
    after(&state, &session, outcome, |()| "rejected").await
}

/// `POST /inbox/questions/{id}/answer`: `POST /v1/questions/{id}/answer` as this key.
async fn answer(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let (session, fields) = match submitted(&state, &headers, &body, &["csrf", "answer"]).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let request = json!({"answer": fields.get("answer").map_or("", |a| a.trim())});
    let outcome = routes::approvals::answer(
        State(state.clone()),
        session.caller.clone(),
        id,
        Ok(json_body(request)),
    )
    .await
    .map(|_| ());
    after(&state, &session, outcome, |()| "answered").await
}

/// `POST /inbox/proposals/{id}/approve`: `POST /v1/proposals/{id}/approve` as this key, with
/// the review token of the analysis the page showed.
async fn approve_proposal(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let allowed = ["csrf", "review_token", "reason"];
    let (session, fields) = match submitted(&state, &headers, &body, &allowed).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let request = json!({"review_token": fields.get("review_token").map_or("", String::as_str)});
    let outcome = routes::proposals::approve(
        State(state.clone()),
        session.caller.clone(),
        id,
        Ok(json_body(request)),
    )
    .await;
    // A 409 `policy_changed` is an answer, not an error: the proposal was analyzed again.
    let outcome = outcome.and_then(|response| {
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ApiError::new(
                response.status(),
                "policy_changed",
                "the live policy changed since the analysis you saw, so the proposal was \
                 analyzed again and nothing was applied: review the new analysis below",
            ))
        }
    });
    after(&state, &session, outcome, |()| "proposal-approved").await
}

/// `POST /inbox/proposals/{id}/reject`: `POST /v1/proposals/{id}/reject` as this key.
async fn reject_proposal(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let allowed = ["csrf", "review_token", "reason"];
    let (session, fields) = match submitted(&state, &headers, &body, &allowed).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let request = with_reason(&fields);
    let outcome = routes::proposals::reject(
        State(state.clone()),
        session.caller.clone(),
        id,
        Ok(json_body(request)),
    )
    .await
    .map(|_| ());
    after(&state, &session, outcome, |()| "proposal-rejected").await
}

/// `POST /inbox/sign-in`: verifies the key as the API does (failures audited and counted
/// toward the source's 429), admits approver keys that name a user, and starts a session.
async fn sign_in(State(state): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let headers = &parts.headers;
    let fields = match form(headers, &body, &["csrf", "key"]) {
        Ok(fields) => fields,
        Err(e) => {
            let notice = Notice::Failed(e.detail().to_owned());
            return sign_in_page(&state, headers, e.status(), Some(notice));
        }
    };
    if !session::sign_in_form_matches(headers, fields.get("csrf").map_or("", String::as_str)) {
        let notice = Notice::Failed("The sign-in form had expired: try again.".to_owned());
        return sign_in_page(&state, headers, StatusCode::FORBIDDEN, Some(notice));
    }
    let caller = match crate::auth::authenticate(
        &state,
        &parts,
        fields.get("key").map(String::as_str),
    )
    .await
    {
        Ok(caller) => caller,
        Err(e) => {
            let text = if e.status() == StatusCode::UNAUTHORIZED {
                "That key was not accepted."
            } else {
                e.detail()
            };
            return sign_in_page(
                &state,
                headers,
                e.status(),
                Some(Notice::Failed(text.to_owned())),
            );
        }
    };
    if !caller.roles.contains(&Role::Approver) || caller.user.is_none() {
        let notice = Notice::Failed(
            "Only approver keys that name a user (`warden keys create --role approver --user U \
             --group G`) can sign in to the inbox."
                .to_owned(),
        );
        return sign_in_page(&state, headers, StatusCode::FORBIDDEN, Some(notice));
    }
    let (session, id) = match session::start(&state, caller).await {
        Ok(started) => started,
        Err(e) => return error_page(&e),
    };
    // Fail closed: a sign-in that cannot be audited does not happen.
    if record(&state, &session, kind::INBOX_SIGNED_IN)
        .await
        .is_err()
    {
        let _ = session::sign_out(&state, &session).await;
        return error_page(&ApiError::audit_unavailable("the sign-in"));
    }
    let lifetime = state.limits().inbox_session_lifetime.as_secs();
    redirect(
        "/",
        vec![
            session::set_cookie(&state, headers, session::SESSION_COOKIE, &id, lifetime),
            session::set_cookie(&state, headers, session::SIGN_IN_COOKIE, "", 0),
        ],
    )
}

/// `POST /inbox/sign-out`: deletes the session (on every replica at once, it is one row).
async fn sign_out(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (session, _) = match submitted(&state, &headers, &body, &["csrf"]).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    if let Err(e) = session::sign_out(&state, &session).await {
        return error_page(&e);
    }
    if record(&state, &session, kind::INBOX_SIGNED_OUT)
        .await
        .is_err()
    {
        tracing::error!("a sign-out could not be audited");
    }
    redirect(
        "/?notice=signed-out",
        vec![session::set_cookie(
            &state,
            &headers,
            session::SESSION_COOKIE,
            "",
            0,
        )],
    )
}

/// Audits a session's start or end.
async fn record(state: &AppState, session: &Session, what: &str) -> Result<(), ()> {
    let now = now_ms();
    let caller = &session.caller;
    let event = NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: caller.tenant.clone(),
        kind: what.to_owned(),
        detail: json!({
            "key_id": caller.key_id,
            "user": caller.user,
            "session": session::audit_id(session),
        }),
        ..NewEvent::default()
    };
    state
        .audit()
        .record(event)
        .await
        .map(|_| ())
        .map_err(|_| ())
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// An open event stream: whose, what it shows, and what the page last saw.
struct Live {
    state: AppState,
    session: Session,
    filter: Filter,
    watcher: crate::approvals::Watcher,
    /// The version the page shows.
    shown: String,
    checked: Instant,
    first: bool,
    ended: bool,
}

impl Live {
    /// The next event to send: `changed` (with the new version) when the page's list is out
    /// of date, `signed-out` when the session ended (then the stream ends).
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            if self.first {
                self.first = false;
            } else {
                let woke = match tokio::time::timeout(SESSION_CHECK, self.watcher.changed()).await {
                    Ok(true) => true,
                    // The server is shutting down: end the stream, the browser reconnects.
                    Ok(false) => return None,
                    Err(_) => false,
                };
                if woke {
                    tokio::time::sleep(SETTLE).await;
                    self.watcher.drain();
                }
                if !woke || self.checked.elapsed() >= SESSION_CHECK {
                    self.checked = Instant::now();
                    // A store that cannot answer is not a sign-out: look again later.
                    if let Ok(false) = session::holds(&self.state, &self.session).await {
                        self.ended = true;
                        return Some(Event::default().event("signed-out").data("signed out"));
                    }
                }
                if !woke {
                    continue;
                }
            }
            match Inbox::gather(&self.state, &self.session.caller, self.filter.clone()).await {
                Ok(inbox) => {
                    let version = inbox.version();
                    if version != self.shown {
                        self.shown.clone_from(&version);
                        return Some(Event::default().event("changed").data(version));
                    }
                }
                Err(e) => tracing::debug!(error = %e.detail(), "the inbox stream could not look"),
            }
        }
    }
}

/// `GET /inbox/events?kind=&status=&since=VERSION`: server-sent events for the page, which
/// shows VERSION: `changed` whenever what it shows differs (at once, if it already does).
async fn events(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let session = match session::current(&state, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            return failed(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                page::plain("Signed out", "Sign in to see the inbox."),
            );
        }
        Err(e) => return error_page(&e),
    };
    let (filter, since) = match Filter::parse(uri.query(), "since") {
        Ok(parsed) => parsed,
        Err(e) => return error_page(&e),
    };
    // Subscribed before the first look, so nothing between the two is missed.
    let watcher = match state.waiters().watch(&state).await {
        Ok(watcher) => watcher,
        Err(e) => return error_page(&e),
    };
    let live = Live {
        state,
        session,
        filter,
        watcher,
        shown: since.unwrap_or_default(),
        checked: Instant::now(),
        first: true,
        ended: false,
    };
    let stream = futures_util::stream::unfold(live, |mut live| async move {
        let event = live.next().await?;
        Some((Ok::<_, Infallible>(event), live))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
