//! Operational routes: liveness, readiness and the OpenAPI spec (no key), and metrics (an
//! operator key, or no key on the separate `--metrics-listen` address).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::keys::Role;
use crate::state::{AppState, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// How long readiness waits for the store.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// On `/readyz`: what an operator should know although the replica can decide, such
    /// as a published policy version it cannot compile (it decides with the previous one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok",
        detail: None,
    })
}

/// The service can decide: the store answers and a policy is loaded.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = HealthBody),
        (status = 503, description = "Not ready, and why", body = ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthBody>, ApiError> {
    let unavailable =
        |detail: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", detail);
    match tokio::time::timeout(PING_TIMEOUT, state.store().ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            return Err(unavailable("the store does not answer"));
        }
        Err(_) => return Err(unavailable("the store does not answer in time")),
    }
    // A full disk leaves reads working: only a write shows whether decisions can be
    // recorded. While the latest commit failed, probe with a real write on the audit path.
    if state.audit().is_failing() {
        match tokio::time::timeout(PING_TIMEOUT, state.store().probe_write(now_ms())).await {
            Ok(Ok(_)) => state.audit().mark_recovered(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: audit writes still fail");
                return Err(unavailable(
                    "audit writes fail, so every decision is denied",
                ));
            }
            Err(_) => return Err(unavailable("audit writes do not complete in time")),
        }
    }
    if state.policies().current().is_empty() {
        return Err(unavailable("no policy is loaded"));
    }
    let failures = state.policies().failures();
    let detail = (!failures.is_empty()).then(|| {
        failures
            .iter()
            .map(|(tenant, f)| {
                format!(
                    "the active policy of `{tenant}` (revision {}, version {}) does not compile here, so the previous one decides: {}",
                    f.revision, f.version, f.problem
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    Ok(Json(HealthBody {
        status: "ready",
        detail,
    }))
}

/// Prometheus text exposition, for operators: the labels name every tenant.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an operator key", body = ErrorBody),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(&[Role::Operator])?;
    Ok(open_metrics(State(state)).await)
}

/// The same, without a key: only on `--metrics-listen`.
pub async fn open_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            state.metrics().policies(state.policies());
            state.metrics().render()
        },
    )
}

/// This API's OpenAPI 3.1 document, generated from the handlers and their types.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::app::openapi_json(),
    )
}
