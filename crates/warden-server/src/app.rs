//! The router (every route, its limits and its error mapping), the OpenAPI document built
//! from the handlers, and [`serve`]: listen, reload on SIGHUP, drain and flush on shutdown.

use crate::audit::AuditTask;
use crate::body;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::routes::{
    admin, approvals, budgets, decisions, denials, health, lifecycle, permits, policy, proposals,
};
use crate::state::AppState;
use crate::state::Limits;
use crate::wire;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The OpenAPI document: every route and body type, generated from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "Warden", description = "Policy decisions, audit and approvals for AI agents"),
    paths(
        decisions::create,
        decisions::show,
        decisions::outcome,
        denials::recent,
        permits::verify,
        permits::keys,
        approvals::list,
        approvals::show,
        approvals::approve,
        approvals::reject,
        approvals::wait,
        approvals::ask,
        approvals::answer,
        approvals::wait_question,
        admin::reload,
        lifecycle::active,
        lifecycle::versions,
        lifecycle::version,
        lifecycle::publish,
        lifecycle::rollback,
        lifecycle::diff,
        lifecycle::start_shadow,
        lifecycle::show_shadow,
        lifecycle::end_shadow,
        policy::digest,
        proposals::submit,
        proposals::list,
        proposals::show,
        proposals::approve,
        proposals::reject,
        proposals::wait,
        admin::query,
        admin::verify,
        budgets::show,
        health::healthz,
        health::readyz,
        health::metrics,
        health::openapi,
    ),
    components(schemas(
        wire::ActionRequest,
        wire::DecisionBody,
        wire::OutcomeRequest,
        wire::OutcomeBody,
        wire::EventBody,
        wire::PermitBody,
        permits::PermitVerifyRequest,
        permits::PermitActionCheck,
        permits::PermitTarget,
        permits::PermitVerifyBody,
        permits::PermitKeysBody,
        crate::permits::PublicKey,
        wire::ApprovalView,
        wire::VoteView,
        wire::ApprovalsBody,
        wire::VoteRequest,
        wire::RejectRequest,
        wire::AnswerRequest,
        wire::QuestionRequest,
        lifecycle::PolicyVersionBody,
        lifecycle::PublishedBody,
        lifecycle::VersionsBody,
        lifecycle::RollbackRequest,
        lifecycle::DiffBody,
        lifecycle::ShadowBody,
        lifecycle::ChangesBody,
        crate::proposals::ProposalView,
        crate::proposals::ProposalSummary,
        proposals::ProposalsBody,
        proposals::ProposalRequest,
        proposals::ApproveRequest,
        proposals::RejectProposalRequest,
        proposals::PolicyChangedBody,
        admin::EventKind,
        admin::EffectName,
        ErrorBody,
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("wdn_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as JSON, built once.
pub fn openapi_json() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default())
        .clone()
}

/// Every route, with the body limit and deadline, request timeout, in-flight bound and
/// error mapping.
pub fn app(state: AppState) -> Router {
    let limits = state.limits().clone();
    let guard = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(guard_error))
        .load_shed()
        // Global, not `concurrency_limit`: `Router::layer` wraps every route on its own,
        // and the bound is on the whole server.
        .layer(GlobalConcurrencyLimitLayer::new(limits.max_in_flight))
        .timeout(limits.request_timeout);
    // Long-polls live outside the guard: a wait is not cut by the request timeout and does
    // not hold an in-flight slot (it holds one of `max_waiters` instead). They take no body.
    let waits = Router::new()
        .route("/v1/approvals/{id}/wait", get(approvals::wait))
        .route("/v1/questions/{id}/wait", get(approvals::wait_question))
        .route("/v1/proposals/{id}/wait", get(proposals::wait))
        .merge(crate::inbox::events_router())
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .route("/v1/decisions", post(decisions::create))
        .route("/v1/decisions/{id}", get(decisions::show))
        .route("/v1/decisions/{id}/outcome", post(decisions::outcome))
        .route("/v1/permits/verify", post(permits::verify))
        .route("/v1/permits/keys", get(permits::keys))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}", get(approvals::show))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/v1/questions", post(approvals::ask))
        .route("/v1/questions/{id}/answer", post(approvals::answer))
        .route(
            "/v1/policy",
            get(lifecycle::active).post(lifecycle::publish),
        )
        .route("/v1/policy/versions", get(lifecycle::versions))
        .route("/v1/policy/versions/{version}", get(lifecycle::version))
        .route("/v1/policy/rollback", post(lifecycle::rollback))
        .route("/v1/policy/diff", get(lifecycle::diff))
        .route(
            "/v1/policy/shadow",
            post(lifecycle::start_shadow)
                .get(lifecycle::show_shadow)
                .delete(lifecycle::end_shadow),
        )
        .route("/v1/policy/reload", post(admin::reload))
        .route("/v1/policy/digest", get(policy::digest))
        .route(
            "/v1/proposals",
            post(proposals::submit).get(proposals::list),
        )
        .route("/v1/proposals/{id}", get(proposals::show))
        .route("/v1/proposals/{id}/approve", post(proposals::approve))
        .route("/v1/proposals/{id}/reject", post(proposals::reject))
        .route("/v1/denials", get(denials::recent))
        .route("/v1/audit", get(admin::query))
        .route("/v1/audit/verify", get(admin::verify))
        .route("/v1/budgets", get(budgets::show))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        // The web approvals inbox (`GET /`), outside the OpenAPI document: pages, not API.
        .merge(crate::inbox::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(guard)
        // Outside the in-flight bound: a slow body holds bytes of the budget, not a slot.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            body::read_first,
        ))
        .merge(waits)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// `GET /metrics` alone and without a key, for `--metrics-listen`: an address only the
/// scraper can reach.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::open_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Answers for requests the guard layers turned away.
async fn guard_error(error: BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; try again",
        )
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::overloaded("too many requests in flight; try again")
    } else {
        tracing::error!(error = %error, "request failed");
        ApiError::internal()
    }
}

/// Counts error codes and logs each request's route, status and time, never its body.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // A cheap clone (shared text), not a new string per request.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let response = next.run(request).await;
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state.metrics().error(code);
    }
    tracing::debug!(
        %method,
        route = route.as_ref().map_or("-", |p| p.as_str()),
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
/// (for at most `Limits::shutdown_grace`, whatever clients do) and flushes the audit writer:
/// every answered decision is durable when this returns. `metrics`, if given, serves
/// `GET /metrics` without a key.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    state: AppState,
    audit: AuditTask,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reloader = tokio::spawn(reload_on_hangup(state.clone()));
    let flusher = tokio::spawn(flush_auth_failures(state.clone()));
    let sweeper = tokio::spawn(sweep_counters(state.clone()));
    let deliverer = tokio::spawn(crate::approvals::deliver(state.clone()));
    let approval_sweeper = tokio::spawn(crate::approvals::sweep(state.clone()));
    let follower =
        tokio::spawn(std::sync::Arc::clone(state.policies()).follow(state.limits().policy_poll));
    let limits = state.limits().clone();
    let (stop, stopped) = watch::channel(false);
    let metrics = metrics.map(|listener| {
        tokio::spawn(accept(
            listener,
            metrics_app(state.clone()),
            limits.clone(),
            stopped.clone(),
        ))
    });
    let main = tokio::spawn(accept(listener, app(state.clone()), limits, stopped));
    shutdown.await;
    let _ = stop.send(true);
    // Open-ended streams (the web inbox's) end now rather than at the grace period's end.
    state.waiters().close();
    let served = main.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    reloader.abort();
    flusher.abort();
    sweeper.abort();
    deliverer.abort();
    approval_sweeper.abort();
    follower.abort();
    crate::auth::flush_failures(&state, true).await;
    audit.finish().await;
    served.unwrap_or(Ok(()))
}

/// Accepts connections until `stopped`, then drains them within the grace period and
/// closes what is left.
async fn accept(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = until_stopped(&mut stopped) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(
                        stream,
                        peer,
                        router.clone(),
                        limits.header_timeout,
                        stopped.clone(),
                    ));
                }
                // Out of file descriptors, say: keep serving the connections we have.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the shutdown grace period are closed"
        );
        connections.abort_all();
    }
    Ok(())
}

/// One HTTP/1.1 connection. The header timeout also closes idle keep-alive connections:
/// hyper starts it whenever it waits for the next request head.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    // Answers are one small write each: send them at once rather than wait for an ACK.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(crate::conn::JsonErrors::new(stream)), service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = until_stopped(&mut stopped) => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Audits the authentication failures of each ended window.
async fn flush_auth_failures(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        crate::auth::flush_failures(&state, false).await;
    }
}

/// How often expired budget and rate-limit counters are deleted. They count as absent from
/// the moment they expire; the sweep only reclaims their rows.
const COUNTER_SWEEP: Duration = Duration::from_secs(60);

/// Deletes expired counters every [`COUNTER_SWEEP`], so invented run ids and past windows
/// cannot grow the table without bound, and clears decision snapshots past their retention.
/// Every replica sweeps; the deletes are idempotent.
async fn sweep_counters(state: AppState) {
    let mut tick = tokio::time::interval(COUNTER_SWEEP);
    loop {
        tick.tick().await;
        let now = crate::state::now_ms();
        match state.store().prune_counters(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "expired counters deleted"),
            Err(e) => tracing::warn!(error = %e, "counter sweep failed; will retry"),
        }
        // Decision snapshots are kept for the retention window only.
        let retention =
            i64::try_from(state.limits().snapshot_retention.as_millis()).unwrap_or(i64::MAX);
        match state
            .store()
            .clear_snapshots(now.saturating_sub(retention))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(cleared = n, "expired decision snapshots cleared"),
            Err(e) => tracing::warn!(error = %e, "snapshot sweep failed; will retry"),
        }
    }
}

/// SIGHUP reloads the policies, as `POST /v1/policy/reload` does.
#[cfg(unix)]
async fn reload_on_hangup(state: AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /v1/policy/reload");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading policies and permit keys");
        // A rotated key file (`warden keys rotate-permit`) is picked up here, and audited
        // when it changed what signs or verifies; a broken one leaves the keys in use.
        let before = state.permits().current().states();
        match state.permits().reload() {
            Ok(()) => {
                let after = state.permits().current().states();
                if after != before {
                    audit_permit_keys(&state, &before, &after).await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the permit keys; keeping the current ones");
            }
        }
        // Failures are logged by the reload itself.
        let _ = admin::reload_policies(&state, None, warden_store::SYSTEM_TENANT, "sighup").await;
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_state: AppState) {}

/// Records that this server now signs and verifies with another key set: the key ids and
/// their states before and after (never a key).
#[cfg_attr(not(unix), allow(dead_code))]
async fn audit_permit_keys(
    state: &AppState,
    before: &[(String, &'static str)],
    after: &[(String, &'static str)],
) {
    let states = |keys: &[(String, &'static str)]| {
        keys.iter()
            .map(|(kid, state)| serde_json::json!({"kid": kid, "state": state}))
            .collect::<Vec<_>>()
    };
    let now = crate::state::now_ms();
    let event = warden_store::NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: warden_store::SYSTEM_TENANT.to_owned(),
        kind: warden_store::kind::PERMIT_KEYS_CHANGED.to_owned(),
        detail: serde_json::json!({"by": "sighup", "before": states(before), "after": states(after)}),
        ..warden_store::NewEvent::default()
    };
    tracing::info!("permit keys changed");
    if state.audit().record(event).await.is_err() {
        tracing::error!("a permit key change could not be audited");
    }
}
