//! `POST /v1/permits/verify` (an executor checks a permit, consuming a use) and
//! `GET /v1/permits/keys` (the public keys, for offline checks).
//!
//! The order of a check is fixed and documented (docs/PERMITS.md): token shape and tenant,
//! key, signature, expiry, action, payload, then the use, counted by the store in the same
//! transaction as the `permit_verified` event. Every check is audited, valid or not, and
//! none is answered before its event is committed.

use crate::auth::Caller;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, in_words, parse_json};
use crate::keys::Role;
use crate::permits::{self, ClaimTarget, MAX_TOKEN_BYTES, PublicKey, Refusal};
use crate::state::{AppState, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use warden_store::{NewEvent, PermitUse, kind};

/// Bodies larger than this are parsed and hashed off the async executor.
const INLINE_BYTES: usize = 64 * 1024;

/// A permit to check, with the payload the executor is about to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermitVerifyRequest {
    /// The token from the decision's `permit.token`.
    #[schema(min_length = 1, max_length = 4096)]
    pub permit: String,
    /// The payload about to be executed; compared by its RFC 8785 SHA-256, so key order
    /// and whitespace do not matter. Absent or `null` for an action without one.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// What the executor is about to do; every field given must match the permit.
    #[serde(default)]
    pub action: Option<PermitActionCheck>,
}

/// The action fields a verify may check against the permit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermitActionCheck {
    /// The action type.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The target: type and id must both match.
    #[serde(default)]
    pub target: Option<PermitTarget>,
    /// The agent.
    #[serde(default)]
    pub agent: Option<String>,
}

/// A target to compare with the permit's. Unlike an action's, any text is accepted here:
/// a value no action could carry is simply a mismatch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermitTarget {
    /// Target type.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Target id.
    #[serde(default)]
    pub id: Option<String>,
}

/// The answer to a verify: always 200; `valid` says whether to run the action.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PermitVerifyBody {
    /// Run the action only if `true`. A `true` has consumed one use.
    pub valid: bool,
    /// `valid`, `bad_signature`, `expired`, `payload_mismatch`, `action_mismatch`,
    /// `used_up`, `revoked` or `unknown_key`.
    pub reason: &'static str,
    /// Uses left after this one, once the use was counted (`valid` and `used_up`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
}

/// The public keys permits are signed with.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PermitKeysBody {
    /// Every key that may still verify a permit.
    pub keys: Vec<PublicKey>,
}

/// Checks a permit against the payload (and optionally the action) an executor is about
/// to run, and consumes one use if it is valid.
#[utoipa::path(
    post,
    path = "/v1/permits/verify",
    tag = "permits",
    request_body = PermitVerifyRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The verdict; an invalid permit is a result, not an error", body = PermitVerifyBody),
        (status = 400, description = "The body is malformed (`invalid_body`, `invalid_field`, `duplicate_key`)", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not a controller or executor key", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
        (status = 503, description = "The check could not be recorded (`audit_unavailable`); run nothing", body = ErrorBody),
    )
)]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<PermitVerifyBody>, ApiError> {
    caller.require(&[Role::Controller, Role::Executor])?;
    let JsonBody(body) = body?;
    let checked = if body.len() > INLINE_BYTES {
        let (state, caller) = (state.clone(), caller.clone());
        tokio::task::spawn_blocking(move || check(&state, &caller, &body))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "permit check failed");
                ApiError::internal()
            })??
    } else {
        check(&state, &caller, &body)?
    };
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the check could not be recorded in the audit log; do not run the action, try again",
        )
    };
    match checked {
        Check::Refused { reason, event } => {
            state
                .audit()
                .record(event)
                .await
                .map_err(|_| unavailable())?;
            Ok(Json(PermitVerifyBody {
                valid: false,
                reason,
                uses_left: None,
            }))
        }
        Check::Consume(permit) => {
            let consumed = state
                .store()
                .consume_permit_use(permit)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "a permit use could not be recorded");
                    unavailable()
                })?;
            Ok(Json(PermitVerifyBody {
                valid: matches!(consumed, warden_store::PermitConsumed::Used { .. }),
                reason: consumed.reason(),
                uses_left: Some(consumed.uses_left()),
            }))
        }
    }
}

/// What a check found before the store: a refusal to audit, or a use to count.
enum Check {
    Refused {
        reason: &'static str,
        event: NewEvent,
    },
    Consume(PermitUse),
}

/// Parses the request and checks everything the token and payload can prove: the CPU part.
fn check(state: &AppState, caller: &Caller, bytes: &[u8]) -> Result<Check, ApiError> {
    let value: Value = parse_json(bytes)?;
    // serde would take an array for an object (a struct's tuple form); the documented shape
    // is an object, and anything else is refused as such.
    let action = value.get("action");
    for (path, field) in [
        ("action", action),
        ("action.target", action.and_then(|a| a.get("target"))),
    ] {
        if field.is_some_and(|v| !(v.is_object() || v.is_null())) {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("invalid `{path}`: expected an object"),
            ));
        }
    }
    let request: PermitVerifyRequest = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_body", in_words(&e.to_string())))?;
    if request.permit.is_empty() || request.permit.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("invalid `permit`: a permit token is 1 to {MAX_TOKEN_BYTES} characters"),
        ));
    }
    let payload = request.payload.unwrap_or(Value::Null);
    if !(payload.is_object() || payload.is_null()) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "invalid `payload`: expected an object",
        ));
    }
    let now = now_ms();
    let event = |decision: Option<&str>, detail: Value| NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: caller.tenant.clone(),
        kind: kind::PERMIT_VERIFIED.to_owned(),
        decision_id: decision.map(str::to_owned),
        detail,
        ..NewEvent::default()
    };
    let refused = |reason: &'static str, decision: Option<&str>, kid: Option<&str>| {
        let mut detail = json!({"valid": false, "reason": reason, "key_id": caller.key_id});
        if let Some(kid) = kid {
            detail["kid"] = kid.into();
        }
        Check::Refused {
            reason,
            event: event(decision, detail),
        }
    };
    let keys = state.permits().current();
    let checked = match keys.check(&request.permit, &caller.tenant, now) {
        Ok(checked) => checked,
        // Genuine but expired: the event names its decision.
        Err(Refusal::Expired { decision_id }) => {
            return Ok(refused("expired", Some(&decision_id), None));
        }
        Err(refusal) => return Ok(refused(refusal.reason(), None, None)),
    };
    let claims = &checked.claims;
    let decision = Some(claims.decision_id.as_str());
    let kid = Some(checked.kid.as_str());
    if let Some(action) = &request.action {
        let target = action.target.as_ref().map(|t| ClaimTarget {
            kind: t.kind.clone(),
            id: t.id.clone(),
        });
        if !permits::action_matches(
            claims,
            action.kind.as_deref(),
            target.as_ref(),
            action.agent.as_deref(),
        ) {
            return Ok(refused("action_mismatch", decision, kid));
        }
    }
    if crate::jcs::payload_sha256(&payload) != claims.payload_sha256 {
        return Ok(refused("payload_mismatch", decision, kid));
    }
    Ok(Check::Consume(PermitUse {
        tenant: caller.tenant.clone(),
        decision_id: claims.decision_id.clone(),
        max_uses: claims.max_uses,
        expires_at_ms: claims.exp.saturating_mul(1000),
        now_ms: now,
        // The store adds `valid`, `reason` and `uses_left`.
        event: event(
            decision,
            json!({"key_id": caller.key_id, "kid": checked.kid}),
        ),
    }))
}

/// The public keys that verify permits, for executors that check them offline.
#[utoipa::path(
    get,
    path = "/v1/permits/keys",
    tag = "permits",
    responses(
        (status = 200, description = "The keys (JWKS-like, RFC 8037 OKP keys)", body = PermitKeysBody),
    )
)]
pub async fn keys(State(state): State<AppState>) -> Response {
    let body = PermitKeysBody {
        keys: state.permits().current().public_keys(now_ms()),
    };
    // Short: a rotation must reach offline verifiers well before old permits are refused.
    ([(header::CACHE_CONTROL, "public, max-age=60")], Json(body)).into_response()
}
