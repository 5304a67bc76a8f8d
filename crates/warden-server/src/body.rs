//! Request bodies: read in full before a request counts against the in-flight bound, within
//! a deadline and a shared byte budget, and JSON only where a route takes JSON.
//!
//! Key decision: a client trickling its body a byte a second used to hold one of the
//! in-flight slots for the whole request timeout, so a thousand of them stopped every other
//! decision. Bodies are now read first, outside that bound: a slow body costs only its
//! bytes (against `--max-body-budget`) until its deadline (`--body-timeout`), and a
//! `Content-Length` over the limit is refused before a byte is read.

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bytes of request bodies being held at once, across all requests.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Reserves `bytes` more for `held`, or says the budget is spent.
    fn reserve(&self, held: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match Arc::clone(&self.0).try_acquire_many_owned(n) {
            Ok(permit) => {
                match held {
                    Some(h) => h.merge(permit),
                    None => *held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// Reads the whole body (within the size limit, the deadline and the budget) and hands the
/// request on with the bytes in memory. The reservation is held until the answer is built.
pub async fn read_first(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = state.limits();
    let (parts, body) = request.into_parts();
    if let Some(length) = content_length(&parts.headers)
        && length > limits.body_bytes as u64
    {
        return too_large().into_response();
    }
    let mut held = None;
    let read = collect(body, limits.body_bytes, state.body_budget(), &mut held);
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => return error.into_response(),
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time",
            )
            .into_response();
        }
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(held);
    response
}

async fn collect(
    mut body: Body,
    limit: usize,
    budget: &BodyBudget,
    held: &mut Option<OwnedSemaphorePermit>,
) -> Result<Bytes, ApiError> {
    // Most bodies arrive as one frame: kept as it is, copied only when more follow.
    let mut first: Option<Bytes> = None;
    let mut buffer = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|_| ApiError::bad_request("invalid_body", "the body could not be read"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(too_large());
        }
        if !budget.reserve(held, data.len()) {
            return Err(ApiError::overloaded(
                "too many request bodies in flight; try again",
            ));
        }
        match first.take() {
            None if buffer.is_empty() => first = Some(data),
            None => buffer.extend_from_slice(&data),
            Some(earlier) => {
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buffer)))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is over the size limit",
    )
}

/// A JSON request body: `Content-Type: application/json` (parameters such as `charset`
/// allowed), or 415. The bytes are parsed by the route, which knows the shape.
#[derive(Debug)]
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state).await?;
        Ok(Self(bytes))
    }
}

/// A policy document body: `application/json` or YAML (`application/yaml`,
/// `application/x-yaml`, `text/yaml`, `text/x-yaml`) in UTF-8, or 415 / 400.
#[derive(Debug)]
pub struct DocumentBody(pub String);

impl<S: Send + Sync> FromRequest<S> for DocumentBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request.headers().get(header::CONTENT_TYPE);
        if !(is_json(content_type) || is_yaml(content_type)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be a policy document, sent with `Content-Type: application/yaml` or `application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state).await?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
            ApiError::bad_request("invalid_body", "the document is not valid UTF-8")
        })?;
        Ok(Self(text))
    }
}

fn is_yaml(value: Option<&HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    [
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
        "text/x-yaml",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

fn is_json(value: Option<&HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_media_types_are_json() {
        let json = |s: &'static str| is_json(Some(&HeaderValue::from_static(s)));
        assert!(json("application/json"));
        assert!(json("Application/JSON; charset=utf-8"));
        assert!(!json("application/x-www-form-urlencoded"));
        assert!(!json("text/plain"));
        assert!(!json("application/jsonx"));
        assert!(!is_json(None));
        let yaml = |s: &'static str| is_yaml(Some(&HeaderValue::from_static(s)));
        assert!(yaml("application/yaml") && yaml("Text/YAML; charset=utf-8"));
        assert!(!yaml("application/yamlx") && !yaml("text/plain"));
    }

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(10);
        let mut a = None;
        assert!(budget.reserve(&mut a, 6));
        let mut b = None;
        assert!(!budget.reserve(&mut b, 6), "only 4 bytes are left");
        assert!(budget.reserve(&mut a, 4));
        drop(a);
        assert!(budget.reserve(&mut b, 10));
    }
}
