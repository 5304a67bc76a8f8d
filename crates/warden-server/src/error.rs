//! The one error type of the HTTP API and its one mapping to a response:
//! `{"error": "code", "detail": "…"}`. Internal text is logged where it happens, never sent.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use warden_policy::json::JsonError;

/// An error answered to the caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after: Option<u32>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code, e.g. `invalid_action`.
    pub error: &'static str,
    /// A sentence for humans. Never internal text.
    pub detail: String,
}

/// The error code of a response, kept as an extension so the metrics layer can count it.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Tells the caller to retry after `seconds` (`Retry-After`), for refusals under load.
    pub fn retry_after(&mut self, seconds: u32) {
        self.retry_after = Some(seconds);
    }

    /// 503 `overloaded`: more work than the server takes at once; retry in a second.
    pub fn overloaded(detail: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail);
        error.retry_after(1);
        error
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401: no valid key.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403: the key may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404: nothing here, or nothing of this tenant's.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 500 with a fixed sentence: something that cannot happen did. The cause is logged by
    /// the caller.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// 503: the store cannot answer. The cause is logged by the caller.
    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store is unavailable; try again",
        )
    }

    /// 503 `audit_unavailable`: `what` could not be recorded, so it did not happen.
    pub fn audit_unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            format!("{what} could not be recorded in the audit log; try again"),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The detail sentence the caller is shown.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.code,
                detail: self.detail,
            }),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the size limit",
            )
        } else {
            Self::bad_request("invalid_body", "the request body could not be read")
        }
    }
}

/// Parses a JSON body into `T` with the strict parser (no repeated keys at any depth),
/// naming what is wrong without internal detail.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = warden_policy::json::parse_strict(bytes).map_err(|e| match e {
        JsonError::DuplicateKey { .. } => ApiError::bad_request("duplicate_key", e.to_string()),
        other => ApiError::bad_request("invalid_body", other.to_string()),
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_body", in_words(&e.to_string())))
}

/// A serde message in the caller's terms: JSON kinds instead of Rust types
/// (`expected struct Target` → `expected an object`, `u64` → `a whole number`).
pub fn in_words(message: &str) -> String {
    let message = message
        .find(" at line ")
        .map_or(message, |at| &message[..at]);
    let mut out = Vec::new();
    let mut words = message.split(' ').peekable();
    while let Some(word) = words.next() {
        match word {
            "struct" | "enum" => {
                // The type's name follows; the caller knows it as an object or a value.
                let name = words.next().unwrap_or("");
                let rest = name.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
                out.push(format!(
                    "{}{rest}",
                    if word == "struct" {
                        "an object"
                    } else {
                        "one of the documented values"
                    }
                ));
                // `with N elements` describes the tuple form serde also accepts.
                if words.peek() == Some(&"with") {
                    words.next();
                    words.next();
                    words.next();
                }
            }
            w => out.push(match w.trim_end_matches([',', '`']) {
                "u8" | "u16" | "u32" | "u64" | "i32" | "i64" | "usize" => {
                    w.replacen(w.trim_end_matches([',', '`']), "a whole number", 1)
                }
                "f32" | "f64" => w.replacen(w.trim_end_matches([',', '`']), "a number", 1),
                "sequence" => w.replacen("sequence", "an array", 1),
                "map" => w.replacen("map", "an object", 1),
                _ => w.to_owned(),
            }),
        }
    }
    out.join(" ")
}
